"""Entry point: `lightning-gpt fit|validate|test|generate|chat|evaluate-chat|make-pairs|export|serve|web ...` (also
`python -m lightning_gpt`)."""

from __future__ import annotations

import sys

from lightning_gpt.cli import GPTCLI, run
from lightning_gpt.commands import COMMANDS
from lightning_gpt.console import configure_console
from lightning_gpt.errors import UserInputError

__all__ = ["GPTCLI", "main", "run"]


def main() -> None:
    """The console script: returns nothing, so that the exit code is 0 on success."""
    configure_console()
    argv = sys.argv[1:]
    if argv and argv[0] in COMMANDS:  # generate, chat, evaluate-chat, make-pairs, export, serve, web: no Trainer
        try:
            COMMANDS[argv[0]](argv[1:])
        except UserInputError as err:
            print(f"lightning-gpt: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        return
    run()


if __name__ == "__main__":
    main()
