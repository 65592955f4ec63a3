"""`lightning-gpt chat`: a conversation with a fine-tuned model in the terminal (the loop: chat_session.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from lightning_gpt.commands import args as flags
from lightning_gpt.errors import UserInputError

HELP = (
    "/system TEXT sets the system message, /reset clears the conversation, /save FILE writes it as JSON, "
    "/quit (or Ctrl+D) exits; Ctrl+C stops an answer."
)
DESCRIPTION = (
    f"Chat with a fine-tuned model. {HELP} When stdin is not a terminal, each line is one user message and each "
    "answer is printed on its own line; when stdout is not a terminal, newlines inside an answer are written as \\n "
    "(and backslashes as \\\\), so that each answer stays one line."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    flags.add_checkpoint(parser)
    flags.add_sampling(parser, max_new_tokens=256)
    parser.add_argument("--system", default=None, help="a system message that opens the conversation")
    flags.add_docs(parser)


def run(args: argparse.Namespace, lines: Iterable[str] | None = None) -> None:
    """Reads user messages from `lines` (stdin by default) until /quit or their end."""
    from dataclasses import replace

    from lightning_gpt.chat import chat_stop_ids, is_chat
    from lightning_gpt.commands.chat_session import ChatSession, run_chat
    from lightning_gpt.loading import load_checkpoint

    settings = flags.sampling_settings(args)
    index = flags.docs_index(args)  # before the checkpoint: a problem with the documents shows at once
    model, tokenizer = load_checkpoint(args.ckpt_path, args.device)
    if not is_chat(tokenizer):
        raise UserInputError(
            f"--ckpt_path {args.ckpt_path} is a pretraining checkpoint without chat tokens; "
            "fine-tune it first (configs/sft_ultrachat.yaml) or use lightning-gpt generate."
        )
    settings = replace(settings, stop_ids=chat_stop_ids(tokenizer))
    one_line = not sys.stdout.isatty()  # a program reading the answers line by line
    session = ChatSession(
        model, tokenizer, settings, system=args.system, index=index, top_k=args.docs_top_k, one_line=one_line
    )
    run_chat(session, lines, interactive=lines is None and sys.stdin.isatty(), help_text=HELP)
