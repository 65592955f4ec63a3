import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_modules import WikiText103
from data_modules.token_cache import array_path, meta_path, read_cache_meta, write_cache
from lightning_gpt.errors import UserInputError
from lightning_gpt.tokenizer import Tokenizer
from tests.conftest import dead_pid, synthetic_articles, wikitext_folder, wikitext_rows, write_hub_folder

REPO = Path(__file__).resolve().parents[2]


def built(dm: WikiText103, split: str = "train"):
    return array_path(dm.cache_base(split), "tokens")


def test_cache_is_built_once_and_reused(wikitext_dir):
    dm = WikiText103(path=str(wikitext_dir), block_size=16)
    dm.prepare_data()
    bin_path = built(dm)
    stamp = bin_path.stat().st_mtime_ns, bin_path.stat().st_ino
    again = WikiText103(path=str(wikitext_dir), block_size=16)
    again.prepare_data()
    assert built(again) == bin_path
    assert (bin_path.stat().st_mtime_ns, bin_path.stat().st_ino) == stamp


def test_cache_is_rebuilt_when_the_data_changes(wikitext_dir):
    dm = WikiText103(path=str(wikitext_dir), block_size=16)
    dm.prepare_data()
    old = built(dm)
    old_meta = json.loads(meta_path(dm.cache_base("train")).read_text())
    write_hub_folder(
        wikitext_dir,
        {
            "train": wikitext_rows(synthetic_articles(41, seed=9)),
            "validation": wikitext_rows(synthetic_articles(6, seed=2)),
        },
    )
    dm2 = WikiText103(path=str(wikitext_dir), block_size=16)
    dm2.prepare_data()
    assert built(dm2) != old
    new_meta = json.loads(meta_path(dm2.cache_base("train")).read_text())
    assert new_meta["arrays"]["tokens"]["length"] != old_meta["arrays"]["tokens"]["length"]
    assert old.is_file()  # the old cache is left alone, not overwritten


def test_cache_holds_articles_separated_by_end_of_text(wikitext_dir):
    dm = WikiText103(path=str(wikitext_dir), block_size=16)
    dm.prepare_data()
    dm.setup("fit")
    tokens = np.asarray(dm.tokens("train"))
    eot = dm.tokenizer.eot_id
    assert (tokens == eot).sum() == 40
    assert json.loads(meta_path(dm.cache_base("train")).read_text())["stats"]["documents"] == 40
    assert tokens[-1] == eot
    first = dm.tokenizer.decode(tokens[: np.argmax(tokens == eot)].tolist())
    assert first.startswith(" = Article 0 = \n") and " = Article 1 = " not in first


def test_a_failed_write_leaves_nothing_behind_and_keeps_the_old_cache(tmp_path):
    base = tmp_path / "split"
    dtypes = {"tokens": np.dtype(np.uint16), "mask": np.dtype(np.uint8)}
    write_cache(base, [{"tokens": np.arange(10), "mask": np.ones(10)}], dtypes, {"tokenizer": "t"})
    before = array_path(base, "tokens").read_bytes()

    def broken_chunks():
        yield {"tokens": np.arange(5), "mask": np.ones(5)}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_cache(base, broken_chunks(), dtypes, {"tokenizer": "t"})
    assert array_path(base, "tokens").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["split.json", "split.mask.bin", "split.tokens.bin"]
    assert read_cache_meta(base, "t")["arrays"]["mask"]["length"] == 10


def test_a_cache_from_another_tokenizer_is_refused(wikitext_dir):
    dm = WikiText103(path=str(wikitext_dir), block_size=16)
    dm.prepare_data()
    chat_fingerprint = Tokenizer(extra_special_tokens=["<|user|>"]).fingerprint
    with pytest.raises(UserInputError, match="built by tokenizer .* delete"):
        read_cache_meta(dm.cache_base("train"), chat_fingerprint)


def test_a_truncated_cache_is_refused_with_the_file_named(wikitext_dir):
    dm = WikiText103(path=str(wikitext_dir), block_size=16)
    dm.prepare_data()
    bin_path = built(dm)
    with open(bin_path, "r+b") as f:
        f.truncate(bin_path.stat().st_size - 2)
    with pytest.raises(UserInputError, match=str(bin_path.name)):
        WikiText103(path=str(wikitext_dir), block_size=16).prepare_data()


# --- the cache key follows the data wherever the folder is, and the column read -----------------------------------


def _rewrite_train_split(folder):
    write_hub_folder(
        folder,
        {
            "train": wikitext_rows(synthetic_articles(41, seed=9)),
            "validation": wikitext_rows(synthetic_articles(6, seed=2)),
        },
    )


def _assert_a_data_change_gives_a_new_cache(path: str, folder):
    dm = WikiText103(path=path, block_size=16)
    dm.prepare_data()
    old_base = dm.cache_base("train")
    old_length = read_cache_meta(old_base, dm.tokenizer.fingerprint)["arrays"]["tokens"]["length"]
    _rewrite_train_split(folder)
    dm2 = WikiText103(path=path, block_size=16)
    dm2.prepare_data()
    assert dm2.cache_base("train") != old_base
    assert (
        read_cache_meta(dm2.cache_base("train"), dm.tokenizer.fingerprint)["arrays"]["tokens"]["length"] != old_length
    )


def test_a_folder_reached_through_a_relative_parent_path_is_fingerprinted(tmp_path, monkeypatch):
    folder = wikitext_folder(tmp_path / "data")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    _assert_a_data_change_gives_a_new_cache("../data", folder)


def test_a_folder_under_a_hidden_parent_is_fingerprinted(tmp_path):
    folder = wikitext_folder(tmp_path / ".hidden" / "data")
    _assert_a_data_change_gives_a_new_cache(str(folder), folder)


def test_hidden_files_inside_the_data_folder_do_not_change_the_key(wikitext_dir):
    before = WikiText103(path=str(wikitext_dir)).cache_base("train")
    (wikitext_dir / ".cache").mkdir()
    (wikitext_dir / ".cache" / "lock").write_text("x")
    assert WikiText103(path=str(wikitext_dir)).cache_base("train") == before


def test_another_text_column_gives_another_cache(tmp_path):
    rows = [{"text": " = A = \n the cat sat . \n", "other": " = B = \n a dog ran on the big red rug . \n"}] * 20
    folder = write_hub_folder(tmp_path / "d", {"train": rows, "validation": rows[:2]})
    first = WikiText103(path=str(folder), block_size=4, num_workers=0)
    second = WikiText103(path=str(folder), block_size=4, num_workers=0, text_column="other")
    assert first.cache_base("train") != second.cache_base("train")
    first.prepare_data()
    second.prepare_data()
    text = second.tokenizer.decode(np.asarray(second.tokens("train"))[:12].tolist())
    assert text.startswith(" = B = \n a dog")


# --- leftovers of killed runs ------------------------------------------------------------------------------------


def _tag(pid: int, host: str | None = None) -> str:
    """The `<host>-<pid>` part of temporary names (lightning_gpt.atomic.owner_tag)."""
    return f"{host or re.sub(r'[^A-Za-z0-9_]', '_', socket.gethostname())[:40] or 'host'}-{pid}"


def _leftovers(folder, pid: int, host: str | None = None) -> list:
    raw = folder / f".raw-{_tag(pid, host)}-ab12cd34"
    (raw / "datasets").mkdir(parents=True)
    (raw / "datasets" / "part.arrow").write_bytes(b"x" * 10)
    temp = folder / f".wikitext103-train-0123456789abcdef0123.tokens.bin.{_tag(pid, host)}.k2j_9x1q.tmp"
    temp.write_bytes(b"half")
    return [raw, temp]


def test_leftovers_of_dead_processes_are_removed_and_live_ones_kept(wikitext_dir):
    dm = WikiText103(path=str(wikitext_dir), block_size=16)
    dm.cache_dir.mkdir(parents=True, exist_ok=True)
    dead = _leftovers(dm.cache_dir, dead_pid())
    live = _leftovers(dm.cache_dir, os.getpid())  # this very process: as if it were building right now
    other_host = _leftovers(dm.cache_dir, dead_pid(), host="some_other_machine")  # shared folder: not ours to judge
    dm.prepare_data()
    assert not any(p.exists() for p in dead)
    assert all(p.exists() for p in live + other_host)
    assert read_cache_meta(dm.cache_base("train"), dm.tokenizer.fingerprint) is not None


_KILLED_BUILD = """
import sys, time
from pathlib import Path
from data_modules import WikiText103

encode = WikiText103.encode_rows

def stalls_after_one_chunk(self, rows, split):
    for chunk in encode(self, rows, split):
        yield chunk
        Path(sys.argv[2]).touch()  # a temporary .bin file holds data now: kill me here
        time.sleep(600)

WikiText103.encode_rows = stalls_after_one_chunk
WikiText103(path=sys.argv[1], block_size=16, num_workers=0).prepare_data()
"""


@pytest.mark.slow
def test_a_build_killed_mid_write_is_cleaned_up_by_the_next_run(wikitext_dir, tmp_path):
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_BUILD, str(wikitext_dir), str(ready)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline, "the build never started writing"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    dm = WikiText103(path=str(wikitext_dir), block_size=16)
    left = sorted(p.name for p in dm.cache_dir.iterdir())
    assert any(n.startswith(".raw-") for n in left) and any(n.endswith(".tmp") for n in left), left
    dm.prepare_data()
    assert not [p.name for p in dm.cache_dir.iterdir() if p.name.startswith(".")]
    assert read_cache_meta(dm.cache_base("train"), dm.tokenizer.fingerprint)["arrays"]["tokens"]["length"] > 0
