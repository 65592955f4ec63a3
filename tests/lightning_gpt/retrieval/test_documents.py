"""--docs: documents read into cited chunks (lightning_gpt/retrieval/documents.py): text by lines, CSV by rows, PDF by
pages, and one line for each file that cannot be used.

Every document is made in the test: text of the shared made-up words, with one planted fact to find."""

import pytest

pytest.importorskip("bm25s")
pytest.importorskip("pypdf")

from lightning_gpt.chat import (  # noqa: E402
    chat_tokenizer,
)
from lightning_gpt.passages import (
    Chunk,  # noqa: E402
)
from lightning_gpt.retrieval.documents import CHUNK_WORDS, file_chunks  # noqa: E402
from lightning_gpt.retrieval.index import load_index  # noqa: E402
from tests.conftest import FACT, filler, text_documents  # noqa: E402

TOKENIZER = chat_tokenizer()


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


def test_a_text_chunk_is_about_chunk_words_and_cites_its_lines(tmp_path):
    (tmp_path / "long.txt").write_text(text_documents(1, paragraphs=40)[0] + "\n" + filler(3 * CHUNK_WORDS, 0))
    chunks = file_chunks(tmp_path / "long.txt", "long.txt")
    assert len(chunks) > 2 and all(len(c.text.split()) <= CHUNK_WORDS for c in chunks)
    spans = [tuple(map(int, c.source.split("lines ")[1].split("-"))) for c in chunks]
    assert spans[0][0] == 1 and spans == sorted(spans)  # in order
    last = len((tmp_path / "long.txt").read_text().splitlines())
    assert spans[-3:] == [(last, last)] * 3  # the long last paragraph, in three chunks, each citing its line
