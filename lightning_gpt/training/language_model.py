"""Next-token prediction (pretraining and chat fine-tuning): the loss on the scored targets, and at validation and
test the loss, perplexity and accuracy, with word perplexity and bits per byte when a whole split was read."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics import Accuracy, MeanMetric, SumMetric

from lightning_gpt.batch import Batch
from lightning_gpt.model import IGNORE_INDEX
from lightning_gpt.training.base import TrainingModule


class GPTModule(TrainingModule):
    """Next-token prediction with a causal transformer: the loss is the mean cross-entropy over the scored targets of
    a whole optimizer step (every target in pretraining, the assistant's tokens in chat fine-tuning).

    Args:
        **kwargs: the model and optimizer settings, see `TrainingModule` (preset, block_size, learning_rate,
            init_from, ...).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.val_nll = MeanMetric()  # token-weighted mean, exact across batches and ranks
        self.test_nll = MeanMetric()
        self.val_targets, self.test_targets = SumMetric(), SumMetric()
        # Next-token accuracy over the tokens that carry loss (the assistant's, in chat fine-tuning).
        accuracy = {
            "task": "multiclass",
            "num_classes": self.config.vocab_size,
            "average": "micro",
            "ignore_index": IGNORE_INDEX,
        }
        self.val_acc, self.test_acc = Accuracy(**accuracy), Accuracy(**accuracy)
        # Loss on a fixed sample of training batches, evaluated like validation (eval mode: no dropout), so that the
        # train/val gap compares like with like (nanoGPT's estimate_loss).
        self.train_eval_nll = MeanMetric()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        self.count_batch(batch, self.model.flops_per_token(batch.inputs.shape[1]))  # forward + backward
        nll_sum = self.model(batch.inputs, batch.targets)  # the logits in chunks, never whole
        n_targets = (batch.targets != IGNORE_INDEX).sum()
        self.track({"nll": nll_sum, "targets": n_targets}, nll_sum.detach() / n_targets.clamp(min=1))
        return self.step_loss(nll_sum, n_targets, batch)

    def step_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"train_loss": sums["nll"] / max(sums["targets"], 1.0)}

    # --- validation and test ----------------------------------------------------------------------------------

    def _metrics(self, stage: str) -> tuple[MeanMetric, Accuracy, SumMetric]:
        return getattr(self, f"{stage}_nll"), getattr(self, f"{stage}_acc"), getattr(self, f"{stage}_targets")

    def _eval_step(self, batch: Batch, stage: str) -> None:
        nll, accuracy, targets = self._metrics(stage)
        logits = self.model.logits(batch.inputs)  # (B, T, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=IGNORE_INDEX)
        n_targets = int((batch.targets != IGNORE_INDEX).sum())  # a host sync, so only here and not in training
        if n_targets:  # a batch can hold no target at all (e.g. only prompts); its NaN loss must not count
            nll.update(loss, weight=n_targets)
            accuracy.update(logits.argmax(dim=-1), batch.targets)
            targets.update(n_targets)

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == 1:  # the fixed sample of training batches (data module, while fitting)
            n_targets = int((batch.targets != IGNORE_INDEX).sum())
            if n_targets:
                self.train_eval_nll.update(self.model(batch.inputs, batch.targets) / n_targets, weight=n_targets)
            return
        self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_eval(self, stage: str) -> None:
        # Perplexity is exp of the token-weighted mean NLL. torchmetrics' Perplexity would give the same number
        # but re-materializes a (B, T, vocab) softmax; the MeanMetric aggregates the same sums across ranks.
        nll, accuracy, targets = self._metrics(stage)
        mean_nll, n_targets = nll.compute(), targets.compute()
        self.log(f"{stage}_loss", mean_nll, prog_bar=True)
        self.log(f"{stage}_ppl", torch.exp(mean_nll))
        self.log(f"{stage}_acc", accuracy.compute())
        self._log_tokenizer_free(stage, mean_nll * n_targets, int(n_targets))
        for metric in (nll, accuracy, targets):
            metric.reset()

    def _log_tokenizer_free(self, stage: str, total_nll: torch.Tensor, n_targets: int) -> None:
        """Word-level perplexity and bits per byte: comparable across tokenizers, so with published numbers.
        Only when the whole split was evaluated (not under limit_val_batches)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        text_stats = getattr(datamodule, "text_stats", None)
        stats = text_stats("val" if stage == "val" else "test") if text_stats else None
        if stats is None or n_targets != stats["targets"]:
            return
        self.log(f"{stage}_word_ppl", torch.exp(total_nll / stats["words"]))
        self.log(f"{stage}_bpb", total_nll / (math.log(2) * stats["bytes"]))

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")
        if self.train_eval_nll.update_called:
            self.log("train_eval_loss", self.train_eval_nll.compute())
            self.train_eval_nll.reset()

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")
