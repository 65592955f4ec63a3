"""`lightning-gpt web`: a chat page in the browser, over the same server as `lightning-gpt serve`.

    lightning-gpt web --ckpt_path chat.ckpt [--host 127.0.0.1] [--port 7860] [--docs my_notes/]

then open http://127.0.0.1:7860/. The page has the system prompt, temperature, top_p and max_tokens at hand, a
message box (Enter sends, Shift+Enter starts a new line), the conversation with the answer streaming in token by
token (with --docs, the sources of the passages it was given shown under it), and a Clear button that empties it.
Errors from the server (a 400's message) are shown in the page.

Why one static page (index.html, next to this file) and not Gradio's ChatInterface: the page is the serve app plus
one route, `GET /`, so it talks to exactly the API that users script against (`POST /v1/chat/completions`, streamed
with `fetch`), with the same request checks, queue and error messages; every request it sends is one a user could
send with curl. It needs nothing beyond the serve extra (Gradio would add a large optional dependency with its own
server, queue and history format, which has changed between major versions), and it is one file to read. The cost:
no ready-made widgets, so the page is a small amount of plain HTML and JavaScript.

The conversation lives in the page: each request carries the whole history (the system prompt, if any, first), as
an OpenAI client's would. A conversation that outgrows the model's context gets the server's error; Clear starts
again.
"""

from __future__ import annotations

import sys
from importlib import resources

from lightning_gpt.serve import load_app, run_server, server_args


def page() -> str:
    """The chat page's HTML (shipped as package data)."""
    return resources.files(__name__).joinpath("index.html").read_text(encoding="utf-8")


def add_page(app) -> None:
    """Serve the chat page at `/` of the serve app."""
    from fastapi.responses import HTMLResponse

    html = page()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(html)


def web_command(argv: list[str]) -> None:
    args = server_args(argv, "lightning-gpt web", __doc__.split("\n\n")[0], port=7860)
    app = load_app(args, "web")
    add_page(app)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"lightning-gpt web: the chat page is at http://{host}:{args.port}/", file=sys.stderr, flush=True)
    run_server(app, args)
