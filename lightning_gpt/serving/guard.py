"""What every request passes before the app sees it: a Host header the server answers to (a page on another site can
otherwise reach a server bound to localhost through the user's browser: DNS rebinding), and a body of bounded size
that arrives in bounded time. An ASGI middleware, so it runs before any JSON is parsed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def error_body(message: str, param: str | None, code: str, status: int) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


def host_name(header: str) -> str:
    """The name of a Host header, without its port: `example.com:8000` -> `example.com`, `[::1]:80` -> `::1`."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class RequestGuard:
    """ASGI middleware around the app.

    Args:
        app: the ASGI app to guard.
        allowed_hosts: the host names the server answers to (any port); None answers to every name.
        max_body_bytes: the largest request body; a larger one gets 413 (from its Content-Length, or once that
            many bytes have come).
        body_timeout: seconds a client may take between two parts of a body; a slower one gets 408.
    """

    def __init__(
        self, app, allowed_hosts: tuple[str, ...] | None, max_body_bytes: int, body_timeout: float = 10.0
    ) -> None:
        self.app, self.max_body_bytes, self.body_timeout = app, max_body_bytes, body_timeout
        self.allowed_hosts = None if allowed_hosts is None else {name.lower() for name in allowed_hosts}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        host = host_name(headers.get("host", "")).lower()
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            names = ", ".join(sorted(self.allowed_hosts))
            message = (
                f"Host {headers.get('host', '')!r} is not a name this server answers to ({names}); start it with "
                "--allowed_hosts NAME to add one."
            )
            return await _respond(send, 400, error_body(message, None, "host_not_allowed", 400))
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await _respond(send, 413, self._too_large(int(declared)))
        if scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        body = await self._read_body(receive, send)
        if body is None:
            return None
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # the disconnect, when the client goes

        return await self.app(scope, replay, send)

    async def _read_body(self, receive: Callable[[], Awaitable[dict]], send) -> bytes | None:
        """The whole body, or None after answering 413 (too large) or 408 (too slow)."""
        parts, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except TimeoutError:
                message = f"the request body did not arrive within {self.body_timeout:g} s; send it whole."
                await _respond(send, 408, error_body(message, None, "request_timeout", 408))
                return None
            if message["type"] == "http.disconnect":
                return None
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > self.max_body_bytes:
                await _respond(send, 413, self._too_large(size))
                return None
            if not message.get("more_body", False):
                return b"".join(parts)

    def _too_large(self, size: int) -> bytes:
        message = (
            f"the request body is {size:,} bytes or more, over this server's limit of {self.max_body_bytes:,}; send "
            "less, or start the server with a larger --max_request_mb."
        )
        return error_body(message, None, "request_too_large", 413)


async def _respond(send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
