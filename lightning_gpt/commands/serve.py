"""`lightning-gpt serve`: an OpenAI-compatible HTTP server over a checkpoint (the app: lightning_gpt/serving/)."""

from __future__ import annotations

import argparse

from lightning_gpt.commands import args as flags
from lightning_gpt.errors import UserInputError

DESCRIPTION = (
    "An OpenAI-compatible server: POST /v1/chat/completions (chat checkpoints), POST /v1/completions and "
    "GET /v1/models, streamed when asked. With --docs, chat answers are given passages of your documents and cite "
    'them. Needs pip install -e ".[serve]".'
)


def add_arguments(parser: argparse.ArgumentParser, port: int = 8000) -> None:
    """The flags `serve` and `web` share."""
    flags.add_checkpoint(parser)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept connections from other machines")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--model_name", default=None, help="the name /v1/models lists (default: the file's stem)")
    flags.add_docs(parser)


def load_app(args: argparse.Namespace, command: str = "serve"):
    """The FastAPI application over the checkpoint that `args` name.

    Raises:
        UserInputError: without the serve extra, saying how to install it; for a bad --port, --ckpt_path or --device.
    """
    if not 0 <= args.port <= 65535:
        raise UserInputError(f"--port must be in 0..65535, got {args.port}")
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise UserInputError(
            f'lightning-gpt {command} needs FastAPI and uvicorn ({err}); install them with: pip install -e ".[serve]"'
        ) from None
    from pathlib import Path

    from lightning_gpt.loading import load_checkpoint
    from lightning_gpt.serving.app import build_app

    index = flags.docs_index(args)
    model, tokenizer = load_checkpoint(args.ckpt_path, args.device)
    return build_app(model, tokenizer, args.model_name or Path(args.ckpt_path).stem, index, args.docs_top_k)


def run_server(app, args: argparse.Namespace) -> None:
    import contextlib

    import uvicorn

    # uvicorn shuts down on SIGINT / SIGTERM, then raises the signal again: SIGTERM ends the process (exit 143),
    # Ctrl+C comes back as a KeyboardInterrupt, after the shutdown, and ends it with exit 0.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=5)


def run(args: argparse.Namespace) -> None:
    run_server(load_app(args), args)
