"""--docs reads only the documents inside the folder it is given: no link out of it, no pipe or device, no folder
link to loop through, no file past the size cap; and its cache follows the files' content, not their dates."""

import os
import threading

import pytest

pytest.importorskip("bm25s")

from lightning_gpt.retrieval.documents import document_files  # noqa: E402
from lightning_gpt.retrieval.index import load_index  # noqa: E402

NOTE = "The lighthouse key hangs by the blue door of the harbour office.\n"


def loaded_within(seconds: float, spec: str, cache, max_bytes: int = 10_000) -> tuple[object, list[str]]:
    """load_index in a thread that must finish in time: a pipe or /dev/zero read would block or fill memory."""
    notes, result = [], {}
    worker = threading.Thread(target=lambda: result.update(index=load_index(spec, cache, notes.append, max_bytes)))
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "load_index did not finish: it read something it should not have"
    return result["index"], notes


@pytest.fixture
def hostile(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "note.md").write_text(NOTE)
    (docs / "sub" / "more.txt").write_text("The boat leaves at nine.\n")
    (tmp_path / "secret.txt").write_text("root:x:0:0:the password file\n")
    (docs / "passwd.txt").symlink_to(tmp_path / "secret.txt")  # a link out of the folder
    (docs / "inside.txt").symlink_to(docs / "sub" / "more.txt")  # a link within it: fine
    os.mkfifo(docs / "pipe.txt")  # opening it would wait for a writer forever
    (docs / "zero.txt").symlink_to("/dev/zero")  # reading it would never end
    (docs / "big.txt").write_text("word " * 5_000)  # 25 kB, over the cap of these tests
    (docs / "up").symlink_to("..")  # a folder link out: never followed
    (docs / "loop").symlink_to(".")  # a folder link to itself: never followed
    return docs


def test_only_regular_files_inside_the_folder_are_read_each_refusal_one_line(hostile, tmp_path):
    index, notes = loaded_within(30, str(hostile), tmp_path / "cache")
    sources = sorted({c.source.split(",")[0] for c in index.chunks})
    assert sources == ["inside.txt", "note.md", "sub/more.txt"]
    assert "password" not in " ".join(c.text for c in index.chunks)
    reasons = {
        "passwd.txt": "outside the documents folder",
        "pipe.txt": "not a regular file",
        "zero.txt": "outside the documents folder",
        "big.txt": "larger than --docs_max_mb",
    }
    assert len(notes) == len(reasons), notes
    for name, reason in reasons.items():
        (line,) = [n for n in notes if f"{name}:" in n]
        assert line.startswith("--docs: skipped ") and reason in line and "\n" not in line


def test_a_glob_never_follows_a_folder_link(hostile):
    notes = []
    files, root = document_files(str(hostile / "**" / "*.txt"), notes.append, max_bytes=100_000)
    assert sorted(p.relative_to(hostile).as_posix() for p in files) == ["big.txt", "inside.txt", "sub/more.txt"]
    assert root == hostile and all("up/" not in p.as_posix() and "loop/" not in p.as_posix() for p in files)


def test_a_same_size_edit_with_the_old_date_rebuilds_the_index(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    note = docs / "note.md"
    note.write_text(NOTE)
    first, _ = loaded_within(30, str(docs), tmp_path / "cache")
    assert first.search("lighthouse", 1)
    stat = note.stat()
    note.write_text(NOTE.replace("lighthouse", "windmills!"))  # the same size, as `cp -p` or `rsync -t` keep it
    os.utime(note, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert note.stat().st_size == stat.st_size and note.stat().st_mtime_ns == stat.st_mtime_ns
    second, _ = loaded_within(30, str(docs), tmp_path / "cache")
    assert not second.from_cache and second.search("windmills", 1) and not second.search("lighthouse", 1)
