"""The chat page of `lightning-gpt web` (lightning_gpt/commands/web.py): index.html beside this file, served at `/`
of the serve app, so that it talks to exactly the API users script against. Why one static page and not Gradio:
docs/design.md.
"""

from __future__ import annotations

from importlib import resources


def page() -> str:
    """The chat page's HTML (shipped as package data)."""
    return resources.files("lightning_gpt.serving").joinpath("index.html").read_text(encoding="utf-8")


def add_page(app) -> None:
    """Serve the chat page at `/` of the serve app."""
    from fastapi.responses import HTMLResponse

    html = page()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(html)
