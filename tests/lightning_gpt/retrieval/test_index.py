"""The --docs index (lightning_gpt/retrieval/index.py): BM25 search that finds the planted passage among distractors,
its cache, and prompts that carry passages within the context."""

import sys

import numpy as np
import pytest

from lightning_gpt.__main__ import main
from lightning_gpt.chat import chat_tokenizer, render_prompt
from lightning_gpt.errors import UserInputError
from lightning_gpt.passages import Chunk
from lightning_gpt.retrieval.index import context_prompt, load_index
from tests.conftest import FACT, QUESTION, filler, planted_folder

pytest.importorskip("bm25s")

TOKENIZER = chat_tokenizer()


def test_retrieval_finds_the_planted_fact_among_distractors(tmp_path):
    index = load_index(str(planted_folder(tmp_path / "docs")), tmp_path / "cache", note=print)
    assert len(index.chunks) > 31  # the lighthouse file is several chunks, so the right one has to be picked
    best = index.search(QUESTION, 3)
    assert best[0].source.startswith("facts/lighthouse.txt, lines ") and FACT in best[0].text
    lines = (tmp_path / "docs" / "facts" / "lighthouse.txt").read_text().splitlines()
    first, last = map(int, best[0].source.split("lines ")[1].split("-"))
    assert FACT in lines[first - 1 : last]  # the cited lines hold the fact
    assert index.search("zzz qqq", 3) == []  # nothing shares a word: no passage rather than a random one


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
