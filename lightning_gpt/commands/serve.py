"""`lightning-gpt serve`: an OpenAI-compatible HTTP server over a checkpoint (the app: lightning_gpt/serving/)."""

from __future__ import annotations

import argparse

from lightning_gpt.commands import args as flags
from lightning_gpt.errors import UserInputError

DESCRIPTION = (
    "An OpenAI-compatible server: POST /v1/chat/completions (chat checkpoints), POST /v1/completions and "
    "GET /v1/models, streamed when asked; concurrent requests are decoded together. With --docs, chat answers are "
    'given passages of your documents and cite them. Needs pip install -e ".[serve]".'
)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser: argparse.ArgumentParser, port: int = 8000) -> None:
    """The flags `serve` and `web` share."""
    flags.add_checkpoint(parser)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept connections from other machines")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--model_name", default=None, help="the name /v1/models lists (default: the run's name)")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max_batch", type=int, default=16, help="requests decoded together")
    limits.add_argument("--max_queue", type=int, default=64, help="requests waiting beyond those; more get 503")
    limits.add_argument("--max_request_mb", type=float, default=1.0, help="the largest request body, in MB (413)")
    limits.add_argument("--max_connections", type=int, default=512, help="open connections; more are refused")
    limits.add_argument(
        "--header_timeout", type=float, default=10.0, help="seconds a client may take to send a request's headers"
    )
    limits.add_argument(
        "--allowed_hosts",
        default=None,
        help="comma-separated Host names to answer besides localhost's (bound to a loopback address, other names "
        "are refused: DNS rebinding); '*' answers every name",
    )
    flags.add_docs(parser)


def check(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise UserInputError(f"--port must be in 0..65535, got {args.port}")
    for flag in ("max_batch", "max_queue", "max_connections"):
        if getattr(args, flag) < 1:
            raise UserInputError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    for flag in ("max_request_mb", "header_timeout"):
        if not getattr(args, flag) > 0:
            raise UserInputError(f"--{flag} must be positive, got {getattr(args, flag)}")


def allowed_hosts(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The Host names answered: localhost's and --allowed_hosts; every name (None) when bound to a public address
    without --allowed_hosts, or with '*'."""
    extra = tuple(name.strip() for name in (args.allowed_hosts or "").split(",") if name.strip())
    if "*" in extra or (args.host not in LOOPBACK and not extra):
        return None
    return (*LOOPBACK, *extra)


def load_app(args: argparse.Namespace, command: str = "serve"):
    """The FastAPI application over the checkpoint that `args` name.

    Raises:
        UserInputError: without the serve extra, saying how to install it; for a bad flag, --ckpt_path or --device.
    """
    check(args)
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise UserInputError(
            f'lightning-gpt {command} needs FastAPI and uvicorn ({err}); install them with: pip install -e ".[serve]"'
        ) from None
    from lightning_gpt.loading import load_checkpoint, run_name
    from lightning_gpt.serving.app import build_app

    index = flags.docs_index(args)
    model, tokenizer = load_checkpoint(args.ckpt_path, args.device)
    name = args.model_name or run_name(args.ckpt_path)
    return build_app(model, tokenizer, name, index, args.docs_top_k, max_batch=args.max_batch, max_queue=args.max_queue)


def guarded(app, args: argparse.Namespace):
    """The app behind the request checks: the Host header, the body's size and pace."""
    from lightning_gpt.serving.guard import RequestGuard

    return RequestGuard(app, allowed_hosts(args), max_body_bytes=int(args.max_request_mb * 1_000_000))


def run_server(app, args: argparse.Namespace) -> None:
    """Serves until SIGINT or SIGTERM; then every request still waiting or running is ended with a 503 its client
    reads (an error event in a stream), and the process exits within seconds."""
    import contextlib

    import uvicorn

    from lightning_gpt.serving.connections import guarded_protocol, quiet_accept_errors, raise_open_file_limit

    engine = app.state.engine
    raise_open_file_limit(args.max_connections + 256)  # the capped connections, plus files and the model's threads
    quiet_accept_errors()

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            engine.close()  # before uvicorn waits for the requests in flight: they end now, properly
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        guarded(app, args),
        host=args.host,
        port=args.port,
        http=guarded_protocol(args.max_connections, args.header_timeout),
        timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
    )
    # uvicorn shuts down on SIGINT / SIGTERM, then raises the signal again: SIGTERM ends the process (exit 143),
    # Ctrl+C comes back as a KeyboardInterrupt, after the shutdown, and ends it with exit 0.
    with contextlib.suppress(KeyboardInterrupt):
        Server(config).run()


def run(args: argparse.Namespace) -> None:
    run_server(load_app(args), args)
