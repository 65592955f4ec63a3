"""What `lightning-gpt` says about itself: every command with its line (alone, --help, after a typo, with the closest
command suggested) and --version. In-process: main() with sys.argv set, as the console script calls it."""

import sys
from importlib.metadata import version

import pytest

from lightning_gpt.__main__ import COMMANDS, TRAINING, main

ALL = [*TRAINING, *COMMANDS]


def run_main(monkeypatch, capsys, *argv):
    monkeypatch.setattr(sys, "argv", ["lightning-gpt", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def listed(text: str) -> dict[str, str]:
    """The command table of a listing: {name: help line}, read back from its indented lines."""
    rows = [line.split(None, 1) for line in text.splitlines() if line.startswith("  ")]
    return {row[0]: row[1].strip() for row in rows if len(row) == 2}


@pytest.mark.parametrize("argv", [[], ["--help"], ["-h"]])
def test_no_command_and_help_list_every_command(argv, monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, *argv)
    assert code == 0
    table = listed(out)
    assert list(table) == ALL and len(ALL) == 11  # fit, validate, test and the 8 commands
    assert table["serve"] == COMMANDS["serve"][1] and table["fit"] == TRAINING["fit"]


@pytest.mark.parametrize(("typo", "meant"), [("serv", "serve"), ("fitt", "fit"), ("evaluate_chat", "evaluate-chat")])
def test_a_typo_lists_every_command_and_suggests_the_closest(typo, meant, monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, typo)
    assert code == 2 and out == ""
    assert f"unknown command {typo!r}. Did you mean {meant!r}?" in err.splitlines()[0]
    assert list(listed(err)) == ALL


def test_a_word_like_no_command_suggests_nothing(monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "xyzzy")
    assert code == 2 and "Did you mean" not in err and list(listed(err)) == ALL


def test_version_is_the_installed_distributions(monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, "--version")
    assert code == 0 and out.strip() == f"lightning-gpt {version('lightning-gpt')}"
