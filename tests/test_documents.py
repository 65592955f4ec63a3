"""--docs: documents read into cited chunks, the cached BM25 index, and prompts that carry passages within the context.

Every document is made in the test: text of the shared made-up words, with one planted fact to find."""

import io
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("bm25s")
pytest.importorskip("pypdf")

from lightning_gpt.__main__ import main  # noqa: E402
from lightning_gpt.chat import (  # noqa: E402
    chat_stop_ids,  # noqa: E402
    chat_tokenizer,
    render_prompt,
)
from lightning_gpt.commands.chat_session import ChatSession, run_chat  # noqa: E402
from lightning_gpt.errors import UserInputError  # noqa: E402
from lightning_gpt.generate import SamplingSettings  # noqa: E402
from lightning_gpt.model import GPT, GPTConfig  # noqa: E402
from lightning_gpt.passages import (
    Chunk,  # noqa: E402
    source_list,  # noqa: E402
)
from lightning_gpt.retrieval.documents import CHUNK_WORDS, file_chunks  # noqa: E402
from lightning_gpt.retrieval.index import context_prompt, load_index  # noqa: E402
from tests.conftest import WORDS, text_documents, text_folder  # noqa: E402

TOKENIZER = chat_tokenizer()
FACT = "The keeper of the northern lighthouse hides the spare key under the green barrel."
QUESTION = "Where does the lighthouse keeper hide the spare key?"


def filler(words: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, words)) + "."


def planted_folder(root):
    """30 notes of made-up words, and one file of several chunks where one paragraph holds FACT."""
    text_folder(root)
    paragraphs = [filler(50, seed) for seed in range(6)]
    paragraphs[4] = FACT
    (root / "facts").mkdir()
    (root / "facts" / "lighthouse.txt").write_text("\n\n".join(paragraphs) + "\n")
    return root


def write_pdf(path, pages: list[str]) -> None:
    """A minimal PDF written by hand: one line of Helvetica text per page, and the cross-reference table."""
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        resources = "/Resources << /Font << /F1 3 0 R >> >>"
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {5 + 2 * i} 0 R {resources} >>")
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    table = f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n" + "".join(f"{o:010d} 00000 n \n" for o in offsets)
    trailer = f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{len(out)}\n%%EOF\n"
    path.write_bytes(out + (table + trailer).encode())


def test_retrieval_finds_the_planted_fact_among_distractors(tmp_path):
    index = load_index(str(planted_folder(tmp_path / "docs")), tmp_path / "cache", note=print)
    assert len(index.chunks) > 31  # the lighthouse file is several chunks, so the right one has to be picked
    best = index.search(QUESTION, 3)
    assert best[0].source.startswith("facts/lighthouse.txt, lines ") and FACT in best[0].text
    lines = (tmp_path / "docs" / "facts" / "lighthouse.txt").read_text().splitlines()
    first, last = map(int, best[0].source.split("lines ")[1].split("-"))
    assert FACT in lines[first - 1 : last]  # the cited lines hold the fact
    assert index.search("zzz qqq", 3) == []  # nothing shares a word: no passage rather than a random one


def test_csv_rows_and_pdf_pages_are_cited_by_number(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "stock.csv").write_text("item,shelf\nred mat,A1\nblue rug,B7\nspare key,C3\n")
    write_pdf(docs / "manual.pdf", ["The cat sat on the mat.", "The lighthouse key hangs by the door."])
    assert file_chunks(docs / "manual.pdf", "manual.pdf") == [
        Chunk("The cat sat on the mat.", "manual.pdf, page 1"),
        Chunk("The lighthouse key hangs by the door.", "manual.pdf, page 2"),
    ]
    index = load_index(str(docs), tmp_path / "cache")
    assert index.search("which shelf holds the blue rug", 1) == [Chunk("item: blue rug; shelf: B7", "stock.csv, row 2")]
    assert index.search("lighthouse door", 1)[0].source == "manual.pdf, page 2"


def test_unusable_files_are_skipped_with_one_line_each(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.md").write_text(FACT + "\n")
    (docs / "empty.txt").write_text("  \n")
    (docs / "binary.txt").write_bytes(b"PK\x03\x04\x00\x00 zipped")
    (docs / "latin1.txt").write_bytes("café".encode("latin-1"))
    (docs / "photo.png").write_bytes(b"\x89PNG\r\n")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog")
    (docs / "gone.txt").symlink_to(tmp_path / "nowhere.txt")  # listed, but opening it fails
    (docs / ".git").mkdir()
    (docs / ".git" / "HEAD").write_text("ref: refs/heads/main\n")  # hidden: not a document, and not worth a line
    notes = []
    index = load_index(str(docs), tmp_path / "cache", note=notes.append)
    assert [c.source for c in index.chunks] == ["good.md, lines 1-1"]
    reasons = {"empty.txt": "empty", "binary.txt": "binary", "latin1.txt": "not UTF-8", "photo.png": "not a supported"}
    reasons |= {"broken.pdf": "not a readable PDF", "gone.txt": "a link that leads nowhere"}
    assert len(notes) == len(reasons)
    for name, reason in reasons.items():
        (line,) = [n for n in notes if f"{name}:" in n]
        assert line.startswith("--docs: skipped ") and reason in line and "\n" not in line


def test_docs_with_nothing_readable_or_without_the_extra_is_one_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserInputError, match="--docs .*none of its 1 file"):
        load_index(str(tmp_path), tmp_path / "cache", note=lambda _: None)
    with pytest.raises(UserInputError, match="--docs .*no such folder or file"):
        load_index(str(tmp_path / "missing" / "*.md"), tmp_path / "cache")
    monkeypatch.setitem(sys.modules, "bm25s", None)  # makes `import bm25s` fail
    monkeypatch.setattr(sys, "argv", ["lightning-gpt", "chat", "--ckpt_path", "x.ckpt", "--docs", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "lightning-gpt[docs]"' in err and "--docs" in err


def test_the_index_is_cached_and_rebuilt_when_a_file_changes(tmp_path):
    docs, cache, notes = planted_folder(tmp_path / "docs"), tmp_path / "cache", []
    (docs / "empty.txt").write_text("")
    assert not load_index(str(docs), cache, note=notes.append).from_cache
    cached = load_index(str(docs), cache, note=notes.append)
    assert cached.from_cache and len(notes) == 2  # the skipped file is named again, from the cache
    assert cached.search(QUESTION, 1)[0].source.startswith("facts/lighthouse.txt")

    (docs / "doc001.md").write_text("The spare key of the lighthouse now hangs behind the keeper's door.\n")
    changed = load_index(str(docs), cache)
    assert not changed.from_cache
    assert changed.search("spare key hangs behind door", 1)[0].source == "doc001.md, lines 1-1"
    (folder,) = [p for p in cache.glob("*/*") if p.is_dir()]  # the old index is gone, and no half-built one is left
    assert not folder.name.startswith(".")

    # An array that needs pickle (which could run code) is never loaded: the cache is rebuilt instead.
    np.save(folder / "data.csc.index.npy", np.array([object()], dtype=object), allow_pickle=True)
    notes.clear()
    rebuilt = load_index(str(docs), cache, note=notes.append)
    assert not rebuilt.from_cache and any("unreadable" in n and "rebuilding" in n for n in notes)
    assert rebuilt.search("northern green barrel", 1)[0].source.startswith("facts/lighthouse.txt")
    assert load_index(str(docs), cache).from_cache


def conversation(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(turns):
        messages += [{"role": "user", "content": f"question {i} " * 6}, {"role": "assistant", "content": "answer " * 6}]
    return messages + [{"role": "user", "content": QUESTION}]


def test_the_prompt_never_exceeds_the_context_and_keeps_the_newest_turns():
    passages = [Chunk(f"{FACT} {filler(40, seed)}", f"notes{seed}.txt, lines 1-3") for seed in range(4)]
    messages = conversation(turns=6)
    whole = len(render_prompt(TOKENIZER, messages))
    for budget in (20, 40, 64, 100, 150, 250, 400, 1000):
        prompt, kept, used = context_prompt(TOKENIZER, messages, passages, budget)
        text = TOKENIZER.decode(prompt)
        assert len(prompt) <= budget or (not used and len(kept) == 2)  # only system + question may be too long
        assert kept[-1] == messages[-1] and kept[1:-1] == messages[len(messages) - len(kept) + 1 : -1]  # newest
        assert [c.source for c in used] == [c.source for c in passages[: len(used)]]  # best first
        for c, original in zip(used, passages, strict=False):
            assert original.text.startswith(c.text) and f"({c.source}) {c.text}" in text
        if 100 <= budget <= 400:  # the passages have at least half of the room, and use it: the last one is cut to fit
            assert used and len(prompt) > budget - 12
        if 100 <= budget <= 250:
            assert used[-1].text != passages[len(used) - 1].text
        if budget >= 250:
            assert used[0] == passages[0]
        if budget >= 2 * whole:  # room for both: the passages do not push out the conversation
            assert kept[1:] == messages[1:]
        if budget >= whole + 4 * 80:
            assert used == passages and kept[1:] == messages[1:]  # room for everything: nothing is left out


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("tiny", vocab_size=TOKENIZER.vocab_size, block_size=160)).eval()


def test_chat_prints_the_sources_of_the_passages_in_its_prompt(model, tmp_path):
    index = load_index(str(planted_folder(tmp_path / "docs")), tmp_path / "cache")
    out = io.StringIO()
    settings = SamplingSettings(max_new_tokens=16, temperature=0, stop_ids=chat_stop_ids(TOKENIZER))
    session = ChatSession(model, TOKENIZER, settings, system="Be brief.", out=out, index=index, top_k=3)
    asked = []
    for question in (QUESTION, "And what is under the red mat?"):
        asked.append(list(session.messages) + [{"role": "user", "content": question}])
        run_chat(session, [question])
        prompt, _, used = context_prompt(TOKENIZER, asked[-1], index.search(question, 3), session.budget)
        assert session.sources == used and used  # what is printed is what the prompt was given
        assert len(prompt) + settings.max_new_tokens <= model.config.block_size
    lines = out.getvalue().splitlines()
    sources = [line for line in lines if line.startswith("sources: ")]
    assert len(sources) == 2 and sources[-1] == f"sources: {source_list(session.sources)}"
    assert sources[0].startswith("sources: [1] facts/lighthouse.txt, lines ")
    assert session.messages[0] == {"role": "system", "content": "Be brief."}  # passages are per turn, not history


def test_a_text_chunk_is_about_chunk_words_and_cites_its_lines(tmp_path):
    (tmp_path / "long.txt").write_text(text_documents(1, paragraphs=40)[0] + "\n" + filler(3 * CHUNK_WORDS, 0))
    chunks = file_chunks(tmp_path / "long.txt", "long.txt")
    assert len(chunks) > 2 and all(len(c.text.split()) <= CHUNK_WORDS for c in chunks)
    spans = [tuple(map(int, c.source.split("lines ")[1].split("-"))) for c in chunks]
    assert spans[0][0] == 1 and spans == sorted(spans)  # in order
    last = len((tmp_path / "long.txt").read_text().splitlines())
    assert spans[-3:] == [(last, last)] * 3  # the long last paragraph, in three chunks, each citing its line
