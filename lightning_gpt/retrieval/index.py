"""Chat with your documents: a cached BM25 index over `--docs`, and the prompt that carries the best passages.

For every user turn the index finds the chunks that best match the user's message (BM25, from `bm25s`), and
`context_prompt` puts them into the system turn, numbered and labelled with their source, within the model's
context: the prompt plus the answer's room never exceeds `block_size`. What has to fit comes first: the system
message and the user's new message; then the passages, best first, the last one cut to fit (they get at least half of
the prompt's room, more when the conversation leaves more); then the earlier turns, newest first.

The index is cached in its own folder (`--docs_cache`, default `$LIGHTNING_GPT_CACHE/docs` or
~/.cache/lightning_gpt/docs), one subfolder per `--docs` value, named by a hash of every file's path, size and
modification time: a changed, added or removed file gives a new name, so the index is rebuilt and the old one
deleted. A cache is built in a temporary folder and renamed into place when complete, so a reader never sees half of
one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from lightning_gpt.atomic import atomic_folder, remove_leftovers
from lightning_gpt.chat import fit_history, render_prompt
from lightning_gpt.errors import UserInputError
from lightning_gpt.passages import Chunk, context_turn
from lightning_gpt.retrieval.documents import MAX_FILE_BYTES, document_files, read_documents
from lightning_gpt.tokenizer import Tokenizer

CACHE_VERSION = 2  # bump when chunking or the index changes, so that old caches are not read
MIN_PASSAGE_WORDS = 5  # a passage cut shorter than this says nothing; it is left out instead


def stderr_note(message: str) -> None:
    print(f"lightning-gpt: {message}", file=sys.stderr, flush=True)


def require_docs_extra() -> None:
    """Raises UserInputError, saying what to install, when bm25s or pypdf is missing."""
    try:
        import bm25s  # noqa: F401
        import pypdf  # noqa: F401
    except ImportError as err:
        raise UserInputError(
            f'--docs needs bm25s and pypdf ({err}); install them with: pip install "lightning-gpt[docs]"'
        ) from None


def tokenize(texts: list[str]) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


class DocumentIndex:
    """The chunks of the documents and their BM25 index."""

    def __init__(self, chunks: list[Chunk], retriever, from_cache: bool = False) -> None:
        self.chunks, self.retriever, self.from_cache = chunks, retriever, from_cache

    @classmethod
    def build(cls, chunks: list[Chunk]) -> DocumentIndex:
        import bm25s

        retriever = bm25s.BM25()
        retriever.index(tokenize([c.text for c in chunks]), show_progress=False)
        return cls(chunks, retriever)

    def search(self, query: str, k: int) -> list[Chunk]:
        """Up to `k` chunks that share words with `query`, best first."""
        found, scores = self.retriever.retrieve(tokenize([query]), k=min(k, len(self.chunks)), show_progress=False)
        return [self.chunks[i] for i, score in zip(found[0], scores[0], strict=True) if score > 0]

    def save(self, folder: Path) -> None:
        self.retriever.save(folder, show_progress=False)
        (folder / "chunks.json").write_text(json.dumps([[c.text, c.source] for c in self.chunks], ensure_ascii=False))

    @classmethod
    def load(cls, folder: Path) -> DocumentIndex:
        """Only numpy arrays and JSON are read: bm25s loads its arrays with allow_pickle=False, so a cache folder
        that someone else wrote cannot run code here (an array that needs pickle fails to load, and is rebuilt)."""
        import bm25s

        retriever = bm25s.BM25.load(folder, allow_pickle=False, show_progress=False)
        chunks = [Chunk(text, source) for text, source in json.loads((folder / "chunks.json").read_text())]
        if retriever.scores["num_docs"] != len(chunks):
            raise ValueError(f"the index has {retriever.scores['num_docs']} chunks, chunks.json {len(chunks)}")
        return cls(chunks, retriever, from_cache=True)


def default_cache_dir() -> Path:
    return Path(os.environ.get("LIGHTNING_GPT_CACHE", Path.home() / ".cache" / "lightning_gpt")) / "docs"


def fingerprint(files: list[Path]) -> str:
    """Changes when any file is added, removed or changed in any byte (a size and a modification time can stay the
    same through an edit: `cp -p`, `rsync -t`)."""
    entries = []
    for path in files:
        try:
            digest = hashlib.sha256()
            with open(path, "rb") as file:
                for block in iter(lambda: file.read(1 << 20), b""):
                    digest.update(block)
            entries.append([str(path.resolve()), digest.hexdigest()])
        except OSError:  # unreadable: it is skipped, and still counts, so that fixing it rebuilds the index
            entries.append([str(path), None])
    return hashlib.sha256(json.dumps([CACHE_VERSION, entries]).encode()).hexdigest()[:32]


def load_index(
    spec: str,
    cache_dir: str | Path | None = None,
    note: Callable[[str], None] = stderr_note,
    max_bytes: int = MAX_FILE_BYTES,
):
    """The index of the documents `--docs spec` names, from the cache when no file has changed since it was built.

    Raises:
        UserInputError: without the docs extra, or when `spec` names no readable document.
    """
    require_docs_extra()
    files, root = document_files(spec, note, max_bytes)  # the files refused (links out, pipes, huge) said there
    home = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    spec_dir = home / hashlib.sha256(str(Path(spec).expanduser().resolve()).encode()).hexdigest()[:16]
    folder = spec_dir / fingerprint(files)
    skipped_file = folder / "skipped.json"
    if (folder / "chunks.json").is_file():
        try:
            index = DocumentIndex.load(folder)
            for line in json.loads(skipped_file.read_text()):  # the same files are skipped: say so again
                note(line)
            return index
        except (OSError, ValueError, KeyError, TypeError) as err:  # a damaged cache: built again
            note(f"--docs: the index cache {folder} is unreadable ({err}); rebuilding it.")
    skipped: list[str] = []

    def skip(line: str) -> None:
        skipped.append(line)
        note(line)

    chunks = read_documents(files, root, skip)
    if not chunks:
        raise UserInputError(
            f"--docs {spec}: none of its {len(files)} file(s) has text to use; pass a folder or glob of "
            ".txt, .md, .csv or .pdf files."
        )
    index = DocumentIndex.build(chunks)
    remove_leftovers(spec_dir)  # what killed builds left
    with atomic_folder(folder, replace=True) as building:  # replacing a damaged cache under the same name
        index.save(building)
        (building / "skipped.json").write_text(json.dumps(skipped))
    for old in spec_dir.iterdir():  # indexes of earlier versions of the files
        if old != folder and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return index


def with_system(system: str | None, turns: list[dict]) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + turns


def context_prompt(
    tokenizer: Tokenizer, messages: list[dict], passages: list[Chunk], budget: int
) -> tuple[list[int], list[dict], list[Chunk]]:
    """The prompt for the next answer, with as many of `passages` (best first) as fit in `budget` tokens.

    Returns:
        The prompt's ids, the messages it renders (the system turn holding the passages) and the passages in it, the
        last possibly cut short. When the system message and the newest user turn alone do not fit, there are no
        passages and the prompt is what fit_history leaves.
    """
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages

    def size(system_text: str | None, kept: list[dict]) -> int:
        return len(render_prompt(tokenizer, with_system(system_text, kept)))

    newest = turns[-1:]
    least = size(system, newest)
    # The passages' share: at least half the room, all that the whole conversation leaves if that is more.
    room = max(min(budget // 2, budget - least), budget - size(system, turns))
    used: list[Chunk] = []
    for passage in passages:
        if size(context_turn(system, [*used, passage]), newest) - least <= room:
            used.append(passage)
            continue
        words = passage.text.split()  # the largest cut of this passage that still fits: binary search on words
        low, high = 0, len(words)
        while low < high:
            mid = (low + high + 1) // 2
            cut = Chunk(" ".join(words[:mid]), passage.source)
            fits = size(context_turn(system, [*used, cut]), newest) - least <= room
            low, high = (mid, high) if fits else (low, mid - 1)
        if low >= MIN_PASSAGE_WORDS:
            used.append(Chunk(" ".join(words[:low]), passage.source))
        break
    kept = fit_history(tokenizer, with_system(context_turn(system, used), turns), budget)
    return render_prompt(tokenizer, kept), kept, used
