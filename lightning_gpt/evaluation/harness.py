"""Our model as an lm-evaluation-harness `LM` (the `eval` extra): the harness's tasks run on it directly, with the
same numbers as the harness's own HFLM on the model `lightning-gpt export` writes (a test compares them per request).

What makes them the same: lm-eval's `TemplateLM` does the text work (context and continuation split, the empty
context replaced by the prefix token, here <|endoftext|> as the export's bos_token), our tokenizer encodes as the
exported one does (a chat model's reads special-token strings in text as those tokens, a plain model's does not),
and the scoring (lightning_gpt/evaluation/scoring.py) cuts and scores windows as HFLM does.
"""

from __future__ import annotations

import re

from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from lightning_gpt.chat import is_chat, render_conversation, render_prompt
from lightning_gpt.evaluation.scoring import loglikelihoods
from lightning_gpt.generate import SamplingSettings, generate
from lightning_gpt.model import GPT
from lightning_gpt.tokenizer import AnyTokenizer


class GPTHarnessLM(TemplateLM):
    """A lightning-gpt model and its tokenizer, for `lm_eval.simple_evaluate(model=GPTHarnessLM(...))`.

    Args:
        model: the model (lightning_gpt.loading.load_checkpoint), in eval mode.
        tokenizer: the tokenizer it was trained with.
        batch_size: requests scored per forward pass.
    """

    def __init__(self, model: GPT, tokenizer: AnyTokenizer, batch_size: int = 32) -> None:
        super().__init__()
        self.model, self.tok, self.batch_size = model, tokenizer, batch_size
        self.chat = is_chat(tokenizer)
        names = sorted(tokenizer.special_tokens, key=len, reverse=True)
        self._specials = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None

    @property
    def eot_token_id(self) -> int:
        return self.tok.eot_id

    @property
    def max_length(self) -> int:
        return self.model.config.block_size

    @property
    def tokenizer_name(self) -> str:  # lm-eval keys its request cache on it when a chat template is applied
        return f"lightning-gpt-{self.tok.fingerprint}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """A chat model reads special-token strings as the tokens (the chat template's text holds its markers, as
        the exported chat tokenizer reads them); a plain model encodes them as text, as everywhere else here."""
        if not self.chat or self._specials is None:
            return self.tok.encode(string)
        ids: list[int] = []
        for i, piece in enumerate(self._specials.split(string)):
            if i % 2:  # the captured separators are the special tokens
                ids.append(self.tok.token_id(piece))
            elif piece:
                ids += self.tok.encode(piece)
        return ids

    def tok_decode(self, tokens: list[int], **kwargs) -> str:
        return self.tok.decode(tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        return loglikelihoods(self.model, [(context, continuation) for _, context, continuation in requests],
                              self.batch_size)  # fmt: skip

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole documents: HFLM's disjoint windows of the context length, the first after the prefix token."""
        totals = []
        for (text,) in (r.args for r in requests):
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(self.tok_encode(text), self.eot_token_id, self.max_length, 1)
            ]
            totals.append(sum(ll for ll, _ in loglikelihoods(self.model, windows, self.batch_size)))
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy answers, cut at the first of the request's `until` strings."""
        answers = []
        for context, kwargs in (r.args for r in requests):
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            budget = int(kwargs.get("max_gen_toks", 256))
            prompt = self.tok_encode(context)[-max(1, self.max_length - budget) :]
            settings = SamplingSettings(max_new_tokens=budget, temperature=0, stop_ids=(self.tok.eot_id,))
            text = self.tok.decode(generate(self.model, [prompt], settings)[0])
            cuts = [text.index(s) for s in until if s and s in text]
            answers.append(text[: min(cuts)] if cuts else text)
        return answers

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The conversation as lightning_gpt/chat.py renders it, as text (what the exported template writes)."""
        if add_generation_prompt:
            return self.tok.decode(render_prompt(self.tok, chat_history))
        ids, _ = render_conversation(self.tok, chat_history)
        return self.tok.decode(ids[:-1])  # an assistant turn left open, to be continued: no <|end|> after it
