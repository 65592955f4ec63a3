"""The HTTP side of `lightning-gpt serve`: OpenAI's routes over one model (`build_app`). `POST /v1/chat/completions`
renders the messages through lightning_gpt.chat's template, `POST /v1/completions` continues plain text as `generate`
does, `GET /v1/models` names the model; both POST routes stream server-sent events when asked. With an index of the
user's documents, chat answers get the best passages for the last user message and list them in an extra `sources`
field. Why FastAPI and how requests queue: docs/design.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import Request  # here, not in build_app: FastAPI reads the routes' annotations from this module

from lightning_gpt.chat import is_chat, render_prompt
from lightning_gpt.errors import UserInputError
from lightning_gpt.model import GPT
from lightning_gpt.passages import Chunk
from lightning_gpt.retrieval.index import DocumentIndex, context_prompt
from lightning_gpt.serving.engine import Answer, Engine
from lightning_gpt.serving.openai_schema import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    chat_chunk,
    chat_response,
    completion_response,
    completion_usage_chunk,
    model_list,
    new_id,
)
from lightning_gpt.tokenizer import Tokenizer

log = logging.getLogger(__name__)

T = TypeVar("T")
DISCONNECT_POLL_S = 0.25  # how often a request without streaming checks that its client is still there
DEFAULT_ANSWER_TOKENS = 256  # with --docs, the room kept for an answer that asks for no max_tokens, as `chat` keeps


def sse(events: AsyncIterator[dict]):
    """A server-sent-events response: each dict as a `data:` line, then `data: [DONE]`. An error after the stream
    has started can no longer change the status, so it is sent as an OpenAI error event."""
    from fastapi.responses import StreamingResponse

    async def lines() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield f"data: {json.dumps(event)}\n\n"
        except APIError as err:  # e.g. the server is shutting down: the client reads why, then the end
            yield f"data: {json.dumps(err.body())}\n\n"
        except Exception as err:
            log.exception("generation failed")
            yield f"data: {json.dumps(APIError(f'generation failed: {err}', status=500).body())}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def unless_gone(http, work: Awaitable[T]) -> T:
    """`work`'s result, or, when the client hangs up first, `work` cancelled (its generation leaves the batch) and
    ClientGone raised: a request without streaming learns of a disconnect only by asking."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await http.is_disconnected():
                raise ClientGone
    finally:
        task.cancel()


class ClientGone(Exception):
    """The client of a request hung up before its answer was ready."""


def build_app(
    model: GPT,
    tokenizer: Tokenizer,
    name: str,
    index: DocumentIndex | None = None,
    top_k: int = 3,
    max_batch: int = 16,
    max_queue: int = 64,
):
    """The FastAPI application serving `model`, `max_batch` requests decoded together and up to `max_queue` more
    waiting (the engine: `app.state.engine`); with `index`, chat answers are given the best `top_k` passages of
    the documents for the last user message, and list their sources in an extra `sources` field."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    engine = Engine(model, tokenizer, name, max_batch=max_batch, max_queue=max_queue)
    app = FastAPI(title="lightning-gpt", description="An OpenAI-compatible server over a lightning-gpt checkpoint.")
    app.state.engine = engine

    @app.exception_handler(APIError)
    async def refused(_: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(ClientGone)
    async def gone(_: Request, err: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it: nginx's code for a client that closed the request

    async def prompt_of(param: str, render, *args) -> Any:
        """A prompt rendered off the event loop (a long text takes a while to tokenize), text that is no valid
        Unicode refused as a 400 naming `param`."""
        try:
            return await asyncio.to_thread(render, *args)
        except UserInputError as err:
            raise APIError(str(err), param, "invalid_text") from None

    @app.exception_handler(RequestValidationError)
    async def malformed(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        where = first["loc"][1:]  # after "body": the field's path, or a position in text that is not JSON
        param = ".".join(str(part) for part in where) if where and isinstance(where[0], str) else None
        message = f"{param}: {first['msg']}" if param else f"request body: {first['msg']}"
        return JSONResponse(APIError(message, param, first["type"]).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse(APIError(str(err.detail), status=err.status_code).body(), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def bug(_: Request, err: Exception) -> JSONResponse:
        log.exception("request failed")
        return JSONResponse(APIError(f"internal error: {err}", status=500).body(), status_code=500)

    @app.get("/v1/models")
    async def models() -> dict:
        return model_list(name, engine.context)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest, http: Request):
        if not is_chat(tokenizer):
            raise APIError(
                f"{name} is a pretrained checkpoint without chat tokens, so it has no chat template; use "
                "/v1/completions, or serve a fine-tuned (SFT or DPO) checkpoint.",
                "model",
                "model_not_chat",
            )
        problem = request.problem()
        if problem:
            raise APIError(*problem)
        messages = [m.model_dump() for m in request.messages]
        max_tokens = request.max_completion_tokens or request.max_tokens
        cited: dict = {}  # the extra field of a served --docs: OpenAI clients ignore it, the web page shows it
        if index is None:
            prompt = await prompt_of("messages", render_prompt, tokenizer, messages)
        else:  # searching and fitting passages too
            prompt, sources = await prompt_of("messages", with_documents, messages, max_tokens)
            cited = {"sources": [c.source for c in sources]}
        settings = engine.settings(prompt, request, max_tokens)
        rid = new_id("chatcmpl")
        if not request.stream:
            answer = await unless_gone(http, engine.answer(prompt, settings))
            counts = (len(prompt), len(answer.tokens))
            return {**chat_response(rid, name, answer.text(), answer.finish_reason(), counts), **cited}

        async def events() -> AsyncIterator[dict]:
            yield {**chat_chunk(rid, name, {"role": "assistant", "content": ""}), **cited}
            answer = Answer(tokenizer, settings)
            async for piece in engine.pieces(prompt, answer):
                if piece:
                    yield chat_chunk(rid, name, {"content": piece})
            yield chat_chunk(rid, name, {}, answer.finish_reason())
            if request.stream_options and request.stream_options.include_usage:
                yield chat_chunk(rid, name, {}, counts=(len(prompt), len(answer.tokens)))

        return sse(events())

    def with_documents(messages: list[dict], max_tokens: int | None) -> tuple[list[int], list[Chunk]]:
        """The prompt with the passages that best match the last user message, leaving the answer its room: the
        max_tokens asked for, else as much as `lightning-gpt chat` leaves by default."""
        budget = engine.context - (max_tokens or min(DEFAULT_ANSWER_TOKENS, engine.context // 2))
        if budget <= 0:  # no room for anything: engine.settings says why
            return render_prompt(tokenizer, messages), []
        query = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        prompt, _, used = context_prompt(tokenizer, messages, index.search(query, top_k), budget)
        return prompt, used

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest, http: Request):
        text = request.text()
        if not text:
            raise APIError("prompt is empty; give some text to continue.", "prompt")
        prompt = await prompt_of("prompt", tokenizer.encode, text)
        settings = engine.settings(prompt, request, request.max_tokens)
        rid = new_id("cmpl")
        if not request.stream:
            answer = await unless_gone(http, engine.answer(prompt, settings))
            counts = (len(prompt), len(answer.tokens))
            return completion_response(rid, name, answer.text(), answer.finish_reason(), counts)

        async def events() -> AsyncIterator[dict]:
            answer = Answer(tokenizer, settings)
            async for piece in engine.pieces(prompt, answer):
                if piece:
                    yield completion_response(rid, name, piece, None)
            yield completion_response(rid, name, "", answer.finish_reason())
            if request.stream_options and request.stream_options.include_usage:
                yield completion_usage_chunk(rid, name, (len(prompt), len(answer.tokens)))

        return sse(events())

    return app
