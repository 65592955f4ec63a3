"""Connections that cannot hold the server: uvicorn's HTTP/1.1 protocol with a deadline for the headers of every
request and a cap on open connections, so half-open connections (slow-loris) are dropped and never exhaust the
process's file descriptors; and one short log line, at most every few seconds, where a limit is hit (uvicorn and
asyncio would log a traceback per event, megabytes a minute)."""

from __future__ import annotations

import logging
import resource
import time

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)
NOTE_EVERY_S = 10.0


class RateLimitedNote:
    """A warning logged at most once every NOTE_EVERY_S seconds, with the count of the events since."""

    def __init__(self, message: str) -> None:
        self.message, self.count, self.last = message, 0, 0.0

    def __call__(self) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= NOTE_EVERY_S:
            log.warning("%s (%d times since the last note)", self.message, self.count)
            self.count, self.last = 0, now


def guarded_protocol(max_connections: int, header_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol class, holding at most `max_connections` open and closing any connection whose next
    request's headers take longer than `header_timeout` seconds to arrive. At the cap, a new connection takes the
    place of the oldest one still waiting for headers (a slow-loris one, or an idle kept-alive one), so that clients
    that send their requests are served while half-open connections churn; only when every connection is busy with
    a request is the new one refused."""
    refused = RateLimitedNote(f"refused connections over --max_connections {max_connections}: all busy")
    evicted = RateLimitedNote(
        f"closed connections waiting for headers to make room (--max_connections {max_connections})"
    )
    timed_out = RateLimitedNote(f"closed connections whose headers took over --header_timeout {header_timeout:g} s")
    waiting: dict = {}  # the connections waiting for a request's headers, oldest first (a dict keeps order)

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._deadline = None
            if len(self.connections) > max_connections:
                if not waiting:
                    refused()
                    transport.abort()
                    return
                oldest = next(iter(waiting))
                evicted()
                oldest._disarm()
                oldest.transport.abort()
            self._arm()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:  # a request's headers are complete
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request's headers, on a kept-alive connection

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout, self._too_slow)
            waiting[self] = None

        def _disarm(self) -> None:
            waiting.pop(self, None)
            if getattr(self, "_deadline", None) is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            waiting.pop(self, None)
            if not self.transport.is_closing():
                timed_out()
                self.transport.abort()

    return GuardedH11Protocol


class _AcceptErrors(logging.Filter):
    """asyncio's accept loop logs a traceback for every connection it cannot accept (out of file descriptors):
    turned into one rate-limited line."""

    def __init__(self) -> None:
        super().__init__()
        self.note = RateLimitedNote("could not accept connections: out of file descriptors or memory")

    def filter(self, record: logging.LogRecord) -> bool:
        if "socket.accept() out of system resource" in record.getMessage():
            self.note()
            return False
        return True


def quiet_accept_errors() -> None:
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _AcceptErrors) for f in asyncio_log.filters):
        asyncio_log.addFilter(_AcceptErrors())


def raise_open_file_limit(wanted: int) -> int:
    """Raises the soft limit of open files towards `wanted` (never above the hard limit); returns the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft
