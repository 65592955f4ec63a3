"""Entry point: `lightning-gpt COMMAND ...` (also `python -m lightning_gpt`). The training commands go to the
LightningCLI (lightning_gpt/cli.py); the others, which use checkpoints, to their module in lightning_gpt/commands/,
imported only when named: they start without Lightning, and `--help` without torch."""

from __future__ import annotations

import argparse
import difflib
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


USAGE = "usage: lightning-gpt COMMAND [ARGS ...]   (lightning-gpt COMMAND --help: its flags; --version)"


def command_list() -> str:
    """Every command with its one line of help: what `lightning-gpt` alone, `--help` and a mistyped command print."""
    lines = {**TRAINING, **{name: help_line for name, (_, help_line) in COMMANDS.items()}}
    width = max(map(len, lines))
    return "\n".join(f"  {name.ljust(width)}  {help_line}" for name, help_line in lines.items())


def closest_command(word: str) -> str | None:
    """The command `word` most likely meant (difflib's closest match), or None when none is close."""
    matches = difflib.get_close_matches(word, [*TRAINING, *COMMANDS], n=1, cutoff=0.6)
    return matches[0] if matches else None


def version() -> str:
    """The installed distribution's version (pyproject.toml's, for an editable install)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("lightning-gpt")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed: pip install -e .)"


def top_level(argv: list[str]) -> int | None:
    """Answers what is not a command: nothing, --help, --version, or an unknown word (a typo: the closest command is
    suggested). Returns the exit code, or None when argv names a command."""
    if argv and (argv[0] in TRAINING or argv[0] in COMMANDS):
        return None
    if argv and argv[0] == "--version":
        print(f"lightning-gpt {version()}")
        return 0
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        return None  # a top-level option of the training CLI (-c FILE fit ...): LightningCLI reads it
    if not argv or argv[0] in ("-h", "--help"):
        print(f"{USAGE}\n\nTrain a GPT and turn it into a chat model. Commands:\n{command_list()}")
        return 0
    guess = closest_command(argv[0])
    hint = f" Did you mean {guess!r}?" if guess else ""
    print(
        f"lightning-gpt: error: unknown command {argv[0]!r}.{hint}\n{USAGE}\n\nCommands:\n{command_list()}",
        file=sys.stderr,
    )
    return 2


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
    code = top_level(argv)
    if code is not None:
        raise SystemExit(code)
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
