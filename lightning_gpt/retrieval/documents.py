"""Your documents as chunks of text, each with the label that cites it: what `--docs` reads.

    notes.md, lines 3-9      paragraphs of .txt and .md files packed into chunks of about CHUNK_WORDS words
    prices.csv, row 12       one chunk per data row of a .csv file ("column: value" pairs, the header not counted)
    manual.pdf, page 4       the text of one .pdf page (a long page gives several chunks, all citing it)

A file that cannot be used (empty, binary, unreadable, of another type, a broken PDF) is skipped with one line that
names it and says why; it never stops the others from being read.
"""

from __future__ import annotations

import csv
import functools
import glob
import io
import logging
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from lightning_gpt.errors import UserInputError
from lightning_gpt.passages import Chunk

SUFFIXES = (".txt", ".md", ".csv", ".pdf")
CHUNK_WORDS = 120  # small enough that a few chunks fit a small model's context beside the conversation
SNIFF_BYTES = 8192  # a NUL byte this early means a binary file, whatever its name says
MAX_FILE_BYTES = 20_000_000  # --docs_max_mb's default: a document larger than this is not read


class Skipped(Exception):
    """A file that is not read; the message says why."""


def document_files(spec: str, note: Callable[[str], None], max_bytes: int = MAX_FILE_BYTES) -> tuple[list[Path], Path]:
    """The files `--docs` names (a folder, searched recursively, a file, or a glob) and the folder their labels
    are relative to. In a folder or a glob, links to folders are never followed (a link to `..` or to itself would
    loop), and a file is read only when it is a regular file inside the folder no larger than `max_bytes`: each
    other one (a link out of the folder, a pipe or a device, a huge file) is left out with one line to `note`.
    Hidden files and folders (.git, .DS_Store) are left out without a word.

    Raises:
        UserInputError: when it names nothing.
    """
    path = Path(spec).expanduser()
    if path.is_file() and not path.is_dir():  # named by the user: read it, wherever a link leads
        return [path], path.parent
    if path.is_dir():
        root, pattern = path, None
    else:
        root, pattern = _glob_root(path), path.as_posix()
    found = []
    for candidate in _walk(root):
        if pattern is not None and not _glob_match(pattern, candidate.as_posix()):
            continue
        problem = _refusal(candidate, root, max_bytes)
        if problem:
            note(f"--docs: skipped {candidate}: {problem}")
        else:
            found.append(candidate)
    if not found and pattern is not None:
        raise UserInputError(f"--docs {spec}: no such folder or file, and no file matches it as a glob.")
    if pattern is not None:
        root = Path(os.path.commonpath([p.parent for p in found]))
    return sorted(found), root


def _walk(root: Path) -> Iterator[Path]:
    """Every entry below `root` that is not a folder; os.walk never descends through a link to a folder (it lists
    one among the folders, and it is left out). Hidden ones are left out too."""
    for folder, subfolders, names in os.walk(root, followlinks=False):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        for name in names:
            if not name.startswith("."):
                yield Path(folder) / name


def _refusal(path: Path, root: Path, max_bytes: int) -> str | None:
    """Why `path` (found below `root`) is not read, or None."""
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):  # a dangling or looping link
        return "a link that leads nowhere"
    if not target.is_relative_to(root.resolve()):
        return "a link to a file outside the documents folder"
    info = target.stat()
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a pipe, a device or a socket)"
    if info.st_size > max_bytes:
        return f"{info.st_size / 1e6:.1f} MB, larger than --docs_max_mb {max_bytes / 1e6:g}"
    return None


def _glob_root(path: Path) -> Path:
    """The folder a glob searches: its longest leading part without wildcards."""
    parts = []
    for part in path.parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _glob_match(pattern: str, candidate: str) -> bool:
    """Whether `candidate` matches the glob `pattern`, `**` standing for any number of folders (as glob's
    recursive mode), `*` and `?` within one name."""
    return re.fullmatch(_glob_regex(pattern), candidate) is not None


@functools.cache
def _glob_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            out.append("[" + pattern[i + 1 : end].replace("!", "^", 1) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def word_chunks(paragraphs: list[tuple[str, int, int]], label: str) -> Iterator[Chunk]:
    """Paragraphs (text, first line, last line) packed into chunks of about CHUNK_WORDS words, a longer paragraph
    split by words; each chunk cites the lines it covers."""
    words: list[str] = []
    first = last = 0
    for text, start, end in paragraphs:
        para = text.split()
        if words and len(words) + len(para) > CHUNK_WORDS:
            yield Chunk(" ".join(words), f"{label}, lines {first}-{last}")
            words = []
        if not words:
            first = start
        words += para
        last = end
        while len(words) > CHUNK_WORDS:  # a paragraph longer than a chunk: cut it, citing its lines for each piece
            yield Chunk(" ".join(words[:CHUNK_WORDS]), f"{label}, lines {first}-{last}")
            words, first = words[CHUNK_WORDS:], start
    if words:
        yield Chunk(" ".join(words), f"{label}, lines {first}-{last}")


def paragraphs(text: str) -> list[tuple[str, int, int]]:
    """The blank-line separated paragraphs of `text`, with their first and last line numbers (from 1)."""
    found, lines, start = [], [], 0
    for number, line in enumerate(text.splitlines() + [""], start=1):
        if line.strip():
            start = start or number
            lines.append(line)
        elif lines:
            found.append(("\n".join(lines), start, number - 1))
            lines, start = [], 0
    return found


def read_bytes(path: Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The file's bytes, refused when there are more than `max_bytes` (it may have grown since it was listed)."""
    with open(path, "rb") as file:
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise Skipped(f"larger than --docs_max_mb {max_bytes / 1e6:g}")
    return data


def read_text(path: Path) -> str:
    data = read_bytes(path)
    if not data.strip():
        raise Skipped("empty")
    if b"\0" in data[:SNIFF_BYTES]:
        raise Skipped("binary (it holds NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise Skipped(f"not UTF-8 text ({err.reason} at byte {err.start})") from None


def text_chunks(path: Path, label: str) -> list[Chunk]:
    return list(word_chunks(paragraphs(read_text(path)), label))


def csv_chunks(path: Path, label: str) -> list[Chunk]:
    """One chunk per data row, as "column: value" pairs so that a row makes sense without its header."""
    rows = list(csv.reader(io.StringIO(read_text(path))))
    header, rows = rows[0], rows[1:]
    chunks = []
    for number, row in enumerate(rows, start=1):
        pairs = [f"{name}: {value}" for name, value in zip(header, row, strict=False) if value.strip()]
        if pairs:
            chunks.append(Chunk("; ".join(pairs), f"{label}, row {number}"))
    return chunks


def pdf_chunks(path: Path, label: str) -> list[Chunk]:
    from pypdf import PdfReader

    if not read_bytes(path).strip():
        raise Skipped("empty")
    pypdf_log = logging.getLogger("pypdf")
    level = pypdf_log.level
    pypdf_log.setLevel(logging.CRITICAL)  # its warnings about a damaged file: our one line says it
    try:
        pages = [page.extract_text() or "" for page in PdfReader(path).pages]
    except Exception as err:  # a damaged file fails deep in the parser, with many kinds of error: all mean the same
        raise Skipped(f"not a readable PDF ({type(err).__name__}: {err})") from None
    finally:
        pypdf_log.setLevel(level)
    chunks = []
    for number, text in enumerate(pages, start=1):
        words = text.split()
        for start in range(0, len(words), CHUNK_WORDS):
            chunks.append(Chunk(" ".join(words[start : start + CHUNK_WORDS]), f"{label}, page {number}"))
    return chunks


READERS: dict[str, Callable[[Path, str], list[Chunk]]] = {
    ".txt": text_chunks,
    ".md": text_chunks,
    ".csv": csv_chunks,
    ".pdf": pdf_chunks,
}


def file_chunks(path: Path, label: str) -> list[Chunk]:
    """The chunks of one file.

    Raises:
        Skipped: saying why the file is not used.
    """
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise Skipped(f"not a supported type (use {', '.join(SUFFIXES)})")
    try:
        chunks = reader(path, label)
    except OSError as err:
        raise Skipped(f"unreadable ({err.strerror or err})") from None
    except csv.Error as err:
        raise Skipped(f"not valid CSV ({err})") from None
    if not chunks:
        raise Skipped("no text in it")
    return chunks


def read_documents(files: list[Path], root: Path, note: Callable[[str], None]) -> list[Chunk]:
    """The chunks of every usable file in `files`, labelled relative to `root`; `note` gets one line per file
    skipped."""
    chunks = []
    for path in files:
        label = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        try:
            chunks += file_chunks(path, label)
        except Skipped as why:
            note(f"--docs: skipped {path}: {why}")
    return chunks
