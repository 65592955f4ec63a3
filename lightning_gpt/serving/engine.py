"""The generation side of `lightning-gpt serve`: the model behind a continuous batcher (`Engine`), and the text of an
answer released as it becomes final (`Answer`). The HTTP side is lightning_gpt/serving/app.py.

The batcher (lightning_gpt/batcher.py) runs in one worker thread: requests wait in a bounded queue, join the batch
at a step boundary when a row is free, and each gets its tokens through its own asyncio queue. A request whose client
has gone is cancelled and leaves the batch at the next step; on shutdown every request still waiting or running is
ended with an error the client can read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from lightning_gpt.batcher import ContinuousBatcher, Sequence
from lightning_gpt.chat import chat_stop_ids, is_chat
from lightning_gpt.generate import SamplingSettings
from lightning_gpt.model import GPT
from lightning_gpt.serving.openai_schema import APIError, ChatCompletionRequest, SamplingFields
from lightning_gpt.streamed_text import StreamedText
from lightning_gpt.tokenizer import Tokenizer

log = logging.getLogger(__name__)
PARAMS = {"max_new_tokens": "max_tokens"}  # SamplingSettings' field names that OpenAI spells otherwise
RETRY_AFTER_S = 1  # what a refused request is told to wait


class Answer(StreamedText):
    """A served answer: its text released as it becomes final (lightning_gpt/streamed_text.py, as the CLI prints
    it), and why it ended."""

    def __init__(self, tokenizer: Tokenizer, settings: SamplingSettings) -> None:
        super().__init__(tokenizer.decode, settings.stop_strings)
        self.settings = settings

    def finish_reason(self) -> str:
        """`length` when max_tokens (or the end of the context) cut the answer, `stop` for a stop token or string."""
        ran_out = len(self.tokens) >= self.settings.max_new_tokens
        return "length" if ran_out and not self.stopped else "stop"


@dataclass(eq=False)
class _Job:
    """A request in the engine: its sequence, and the asyncio queue its tokens go to (then None, or an error)."""

    sequence: Sequence
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    ended: bool = False

    def send(self, item) -> None:
        """From the worker thread: hands `item` to the request's event loop (ignored once that loop has closed)."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def end(self, error: BaseException | None = None) -> None:
        if not self.ended:
            self.ended = True
            self.send(error)


class Engine:
    """The model and the queue in front of it: up to `max_batch` requests decoded together, up to `max_queue` more
    waiting; a request beyond those is refused at once (503, with Retry-After)."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, name: str, max_batch: int = 16, max_queue: int = 64) -> None:
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.context = model.config.block_size
        self.stop_ids = chat_stop_ids(tokenizer) if is_chat(tokenizer) else (tokenizer.eot_id,)
        self.max_queue = max_queue
        self._batcher = ContinuousBatcher(model, max_batch)
        self._pending: collections.deque[_Job] = collections.deque()
        self._running: list[_Job] = []
        self._wake = threading.Condition()
        self._closing: str | None = None
        self._thread = threading.Thread(target=self._work, name="lightning-gpt-engine", daemon=True)
        self._thread.start()

    def settings(self, prompt: list[int], request: SamplingFields, max_tokens: int | None) -> SamplingSettings:
        """The request's sampling settings, checked against the prompt's length and the model's context.

        Raises:
            APIError: naming the request field at fault.
        """
        if request.n != 1:
            raise APIError(f"n must be 1 (this server writes one answer per request), got {request.n}.", "n")
        room = self.context - len(prompt)
        if room < 1:
            raise APIError(
                f"the prompt is {len(prompt)} tokens, which fills this model's context of {self.context} tokens; "
                "send a shorter one.",
                "messages" if isinstance(request, ChatCompletionRequest) else "prompt",
                "context_length_exceeded",
            )
        if max_tokens is not None and max_tokens > room:
            raise APIError(
                f"max_tokens {max_tokens} is beyond the context: the prompt takes {len(prompt)} of this model's "
                f"{self.context} tokens, which leaves {room}.",
                "max_tokens",
                "context_length_exceeded",
            )
        values = {
            "max_new_tokens": max_tokens or room,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
            "stop_ids": self.stop_ids,
            "stop_strings": request.stop_strings(),
        }
        try:
            return SamplingSettings(**values)
        except ValueError as err:  # the message starts with the field's name
            name = str(err).split()[0]
            raise APIError(str(err).replace(name, PARAMS.get(name, name), 1), PARAMS.get(name, name)) from None

    async def tokens(self, prompt: list[int], settings: SamplingSettings) -> AsyncIterator[int]:
        """The answer's tokens as they are generated. Leaving the loop early (the client has gone) cancels it.

        Raises:
            APIError: 503 when the queue is full or the server is shutting down.
        """
        job = self._submit(prompt, settings)
        try:
            while (item := await job.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._batcher.cancel(job.sequence)  # nothing if it had ended
            with self._wake:
                self._wake.notify()

    def _submit(self, prompt: list[int], settings: SamplingSettings) -> _Job:
        job = _Job(Sequence(prompt, settings, self.tokenizer.decode), asyncio.get_running_loop(), asyncio.Queue())
        with self._wake:
            if self._closing:
                raise APIError(self._closing, status=503, code="server_shutting_down")
            if self.waiting >= self.max_queue:
                raise APIError(
                    f"the server is busy: {self.waiting} requests are waiting already (--max_queue "
                    f"{self.max_queue}); retry in a moment.",
                    status=503,
                    code="server_busy",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                )
            self._pending.append(job)
            self._wake.notify()
        return job

    def close(self, reason: str = "the server is shutting down; send the request again later.") -> None:
        """Ends every request, waiting or running, with `reason` (a 503 the client reads) and stops the worker."""
        with self._wake:
            self._closing = reason
            jobs = [*self._pending, *self._running]
            self._pending.clear()
            self._wake.notify()
        for job in jobs:
            self._batcher.cancel(job.sequence)
            job.end(APIError(reason, status=503, code="server_shutting_down"))

    @property
    def waiting(self) -> int:
        """Requests that wait for a row: those submitted beyond the rows free now."""
        free = self._batcher.max_rows - len(self._running)
        return max(0, len(self._pending) - free)

    def _work(self) -> None:
        """The worker thread: admits waiting requests into free rows, then decodes one step for all of them."""
        while True:
            with self._wake:
                while not self._closing and not self._pending and not self._running:
                    self._wake.wait()
                if self._closing:
                    return
                admitted = []
                while self._pending and self._batcher.free_rows > len(admitted):
                    admitted.append(self._pending.popleft())
            try:
                self._step(admitted)
            except Exception as err:  # a bug: every request in flight gets it, the server goes on
                log.exception("generation failed")
                for job in [*admitted, *self._running]:
                    self._batcher.cancel(job.sequence)
                    job.end(APIError(f"generation failed: {err}", status=500))
                self._running = [job for job in self._running if not job.ended]
                self._batcher = ContinuousBatcher(self.model, self._batcher.max_rows)

    def _step(self, admitted: list[_Job]) -> None:
        for job in admitted:
            if job.sequence.finish_reason == "cancelled":  # its client left while it waited
                job.end()
                continue
            token = self._batcher.add(job.sequence)
            if token is not None:
                job.send(token)
            self._running.append(job)
        for sequence, token in self._batcher.step():
            self._job_of(sequence).send(token)
        still = []
        for job in self._running:
            if job.sequence.finish_reason is None:
                still.append(job)
            else:
                job.end()
        self._running = still

    def _job_of(self, sequence: Sequence) -> _Job:
        return next(job for job in self._running if job.sequence is sequence)

    async def answer(self, prompt: list[int], settings: SamplingSettings) -> Answer:
        answer = Answer(self.tokenizer, settings)
        async for token in self.tokens(prompt, settings):
            answer.add(token)
        return answer

    async def pieces(self, prompt: list[int], answer: Answer) -> AsyncIterator[str]:
        """The answer's new text as tokens arrive; the last piece is the text held back until the end."""
        async for token in self.tokens(prompt, answer.settings):
            piece = answer.add(token)
            if piece:
                yield piece
        yield answer.rest()
