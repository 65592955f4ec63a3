"""`lightning-gpt generate`: continue a prompt, streamed as it is written."""

from __future__ import annotations

import argparse
import sys

from lightning_gpt.commands import args as flags
from lightning_gpt.errors import UserInputError

DESCRIPTION = "Continue a prompt with a trained model; the text is printed as it is generated."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    flags.add_checkpoint(parser)
    flags.add_sampling(parser, max_new_tokens=200)
    parser.add_argument("--prompt", required=True)


def run(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from lightning_gpt.chat import chat_stop_ids, is_chat
    from lightning_gpt.generate import stream
    from lightning_gpt.loading import load_checkpoint
    from lightning_gpt.streamed_text import StreamedText

    settings = flags.sampling_settings(args)
    if not args.prompt:
        raise UserInputError("--prompt is empty; give some text to continue.")
    model, tokenizer = load_checkpoint(args.ckpt_path, args.device)
    prompt = tokenizer.encode(args.prompt)
    stop_ids = chat_stop_ids(tokenizer) if is_chat(tokenizer) else (tokenizer.eot_id,)
    settings = replace(settings, stop_ids=stop_ids)
    text = StreamedText(tokenizer.decode, settings.stop_strings)  # holds back what may start a stop string
    sys.stdout.write(args.prompt)
    for pairs in stream(model, [prompt], settings, decode=tokenizer.decode):
        sys.stdout.write(text.add(pairs[0][1]))
        sys.stdout.flush()
    sys.stdout.write(text.rest() + "\n")
