"""The generation side of `lightning-gpt serve`: one model behind a queue (`Engine`), and the text of an answer
released as it becomes final (`Answer`). The HTTP side is lightning_gpt/serving/app.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from lightning_gpt.chat import chat_stop_ids, is_chat
from lightning_gpt.generate import SamplingSettings, stream
from lightning_gpt.model import GPT
from lightning_gpt.serving.openai_schema import APIError, ChatCompletionRequest, SamplingFields
from lightning_gpt.streamed_text import StreamedText
from lightning_gpt.tokenizer import Tokenizer

PARAMS = {"max_new_tokens": "max_tokens"}  # SamplingSettings' field names that OpenAI spells otherwise


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


class Engine:
    """The model, and the queue in front of it (docs/design.md, "Serving")."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, name: str) -> None:
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.context = model.config.block_size
        self.stop_ids = chat_stop_ids(tokenizer) if is_chat(tokenizer) else (tokenizer.eot_id,)
        self.lock = asyncio.Lock()

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
        """The answer's tokens as they are generated, once this request's turn has come."""
        async with self.lock:
            steps = stream(self.model, [prompt], settings, decode=self.tokenizer.decode)
            while (pairs := await asyncio.to_thread(next, steps, None)) is not None:
                yield pairs[0][1]

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
