"""The OpenAI wire format that `lightning-gpt serve` speaks: request models (pydantic, so FastAPI checks the JSON),
the error body, and the response and stream-chunk dicts.

Only what this project's models can honour is accepted: one choice (n=1), text content, the sampling settings of
`lightning_gpt.generate.SamplingSettings`. Fields the OpenAI API has and we do not use (logprobs, user, ...) are
ignored, as OpenAI-compatible servers usually do.
"""

from __future__ import annotations

import time
import uuid

from pydantic import BaseModel, Field, field_validator

ROLES = ("system", "user", "assistant")
MAX_STOPS = 4
MAX_STOP_CHARS = 1000


class APIError(Exception):
    """A request the server refuses: sent back as OpenAI's `{"error": {...}}` body with this status."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        code: str | None = None,
        status: int = 400,
        kind: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """What both routes share."""

    model: str = ""
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)  # what torch's generators take
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _few_short_stops(cls, stop):
        """OpenAI's limit of 4 stop strings, each at most MAX_STOP_CHARS long (a stop string is text the model
        writes; a long one only costs the server)."""
        stops = [stop] if isinstance(stop, str) else (stop or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings, got {len(stops)}")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop string has at most {MAX_STOP_CHARS} characters")
        return stop

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in stops if s)


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    """The newer name of max_tokens; either may be given."""

    def problem(self) -> tuple[str, str] | None:
        """(message, param) of what is wrong with the messages, or None."""
        if not self.messages:
            return "messages is empty; send at least one user message.", "messages"
        for i, message in enumerate(self.messages):
            if message.role not in ROLES:
                return f"messages[{i}].role {message.role!r} is unknown; use one of {', '.join(ROLES)}.", "messages"
        return None


class CompletionRequest(SamplingFields):
    prompt: str | list[str]

    def text(self) -> str:
        """The one prompt (a list of one is accepted too: clients send that)."""
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise APIError("prompt: this server answers one prompt per request.", "prompt")
            return self.prompt[0]
        return self.prompt


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_response(rid: str, model: str, text: str, finish: str, counts: tuple[int, int]) -> dict:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None}
        ],
        "usage": usage(*counts),
    }


def chat_chunk(rid: str, model: str, delta: dict, finish: str | None = None, counts=None) -> dict:
    """One `chat.completion.chunk`; with `counts` the closing usage chunk (no choices), as OpenAI sends it."""
    choices = [] if counts else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    chunk = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    return {**chunk, "choices": choices, **({"usage": usage(*counts)} if counts else {})}


def completion_response(rid: str, model: str, text: str, finish: str | None, counts=None) -> dict:
    """A `text_completion`: the whole answer (with `counts`), or a streamed piece of it."""
    body = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model}
    choices = [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]
    return {**body, "choices": choices, **({"usage": usage(*counts)} if counts else {})}


def completion_usage_chunk(rid: str, model: str, counts: tuple[int, int]) -> dict:
    """The closing chunk of a streamed completion asked for with stream_options.include_usage."""
    body = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model}
    return {**body, "choices": [], "usage": usage(*counts)}


def model_list(model: str, context: int) -> dict:
    entry: dict[str, object] = {"id": model, "object": "model", "created": 0, "owned_by": "lightning-gpt"}
    return {"object": "list", "data": [{**entry, "context_length": context}]}
