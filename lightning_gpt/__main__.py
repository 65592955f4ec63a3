"""Entry point: `lightning-gpt COMMAND ...` (also `python -m lightning_gpt`). The training commands go to the
LightningCLI (lightning_gpt/cli.py); the others, which use checkpoints, to their module in lightning_gpt/commands/,
imported only when named: they start without Lightning, and `--help` without torch."""

from __future__ import annotations

import argparse
import importlib
import sys

from lightning_gpt.errors import UserInputError

TRAINING = {
    "fit": "train a model (pretraining, SFT, DPO, reward model: the config's model.class_path picks the stage)",
    "validate": "score a checkpoint (or --model.init_from) on the validation split",
    "test": "score a checkpoint (or --model.init_from) on the test split",
}
COMMANDS = {  # name: (module in lightning_gpt.commands, one line of help)
    "generate": ("generate", "continue a prompt"),
    "chat": ("chat", "chat with a fine-tuned model in the terminal (--docs: over your documents)"),
    "evaluate": ("evaluate", "benchmarks through lm-evaluation-harness, and the checkpoint's evaluation card"),
    "evaluate-chat": ("evaluate_chat", "ROUGE-L of a chat model's answers against UltraChat's"),
    "make-pairs": ("make_pairs", "preference pairs from the model's own answers, scored by a reward model"),
    "export": ("export", "write a checkpoint as a Hugging Face transformers folder"),
    "serve": ("serve", "an OpenAI-compatible HTTP server"),
    "web": ("web", "a chat page in the browser"),
}


def command_parser(name: str):
    """The command's module and its argument parser."""
    module = importlib.import_module(f"lightning_gpt.commands.{COMMANDS[name][0]}")
    parser = argparse.ArgumentParser(prog=f"lightning-gpt {name}", description=module.DESCRIPTION)
    module.add_arguments(parser)
    return module, parser


def run_command(name: str, argv: list[str]):
    """Parses `argv` for command `name` and runs it; returns what it returns (tests read it)."""
    module, parser = command_parser(name)
    return module.run(parser.parse_args(argv))


def main() -> None:
    """The console script: returns nothing, so that the exit code is 0 on success."""
    from lightning_gpt.console import configure_console

    configure_console()
    argv = sys.argv[1:]
    if argv and argv[0] in COMMANDS:  # the commands that use checkpoints: no Trainer
        try:
            run_command(argv[0], argv[1:])
        except UserInputError as err:
            print(f"lightning-gpt: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        return
    from lightning_gpt.cli import run

    run()


if __name__ == "__main__":
    main()
