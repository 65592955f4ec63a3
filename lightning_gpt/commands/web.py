"""`lightning-gpt web`: a chat page in the browser, over the same server as `lightning-gpt serve`; open the address
it prints. The page has the system prompt, temperature, top_p and max_tokens at hand, the answer streaming in, and
(with --docs) the sources under each answer."""

from __future__ import annotations

import argparse
import sys

from lightning_gpt.commands import serve

DESCRIPTION = (
    "A chat page in the browser over serve's API (system prompt, sampling settings, streamed answers, the sources of "
    '--docs). Needs pip install -e ".[serve]".'
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    serve.add_arguments(parser, port=7860)


def load_app(args: argparse.Namespace):
    """serve's application with the page at `/`.

    Raises:
        UserInputError: as serve.load_app does.
    """
    from lightning_gpt.serving.web import add_page

    app = serve.load_app(args, "web")
    add_page(app)
    return app


def run(args: argparse.Namespace) -> None:
    app = load_app(args)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"lightning-gpt web: the chat page is at http://{host}:{args.port}/", file=sys.stderr, flush=True)
    serve.run_server(app, args)
