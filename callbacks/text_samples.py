"""Text samples during training: at each validation, generate from a few prompts and log them to TensorBoard."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_gpt.chat import chat_stop_ids, is_chat, render_prompt
from lightning_gpt.generate import SamplingSettings, generate


def markdown_sample(prompt: str, sample: str) -> str:
    """A sample as TensorBoard shows it: markdown (a chat answer's lists and emphasis render), the prompt in bold,
    and every line break of the text kept (markdown would join single lines into one paragraph)."""

    def lines(text: str) -> str:
        return "  \n".join(text.split("\n"))  # two trailing spaces: a hard line break

    return f"**{lines(prompt.strip())}**\n\n{lines(sample)}"


@contextmanager
def sampling_from(trainer: L.Trainer, pl_module: L.LightningModule) -> Iterator[None]:
    """The module's model in eval mode (no dropout) under the run's bf16 autocast, if any, then back in the mode
    it was in: generating from the model being trained."""
    model = pl_module.model
    was_training = model.training
    model.eval()
    bf16 = "bf16" in str(trainer.precision)
    try:
        with torch.autocast(pl_module.device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
            yield
    finally:
        model.train(was_training)


class GenerateSamples(L.Callback):
    """Generates from `prompts` after each validation and logs prompt + output as TensorBoard text
    (`samples/<i>`). For a chat model (one whose data module adds chat tokens) each prompt is a user message and
    the output is the assistant's answer.

    Args:
        prompts: texts to continue, or user messages for a chat model.
        max_new_tokens: length of each sample.
        temperature: sampling temperature; 0 is greedy.
        top_k: sample among the k most likely tokens.
        seed: fixes the samples, so that successive validations differ only by what the model learned.
    """

    def __init__(
        self,
        prompts: list[str],
        max_new_tokens: int = 64,
        temperature: float = 0.8,
        top_k: int | None = 50,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.prompts = prompts
        self.settings = SamplingSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
        self.last_samples: list[str] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)  # the data module knows which tokens exist
        if trainer.sanity_checking or not trainer.is_global_zero or not self.prompts or tokenizer is None:
            return
        chat = is_chat(tokenizer)
        if chat:
            prompts = [render_prompt(tokenizer, [{"role": "user", "content": p}]) for p in self.prompts]
            stops = chat_stop_ids(tokenizer)
        else:
            prompts = [tokenizer.encode(p) for p in self.prompts]
            stops = (tokenizer.eot_id,)
        settings = replace(self.settings, stop_ids=stops)
        with sampling_from(trainer, pl_module):
            outputs = generate(pl_module.model, prompts, settings)
        self.last_samples = [tokenizer.decode(o) for o in outputs]
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for i, (prompt, sample) in enumerate(zip(self.prompts, self.last_samples, strict=True)):
                    shown = markdown_sample(prompt, sample)
                    logger.experiment.add_text(f"samples/{i}", shown, global_step=trainer.global_step)
