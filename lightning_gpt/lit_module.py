"""The LightningModule: wraps the plain-PyTorch GPT with its loss, metrics, optimizer and schedule."""

from __future__ import annotations

import math

import lightning as L
import torch
from torchmetrics import Accuracy, MeanMetric, SumMetric

from lightning_gpt.checkpoint import load_pretrained, shape_mismatches
from lightning_gpt.errors import UserInputError
from lightning_gpt.model import GPT, IGNORE_INDEX, GPTConfig
from lightning_gpt.optim import adamw_warmup_cosine


class GPTModule(L.LightningModule):
    """Next-token prediction with a causal transformer.

    Args:
        preset: model shape: "tiny", "small" or "gpt2-124m" (see lightning_gpt/model.py).
        vocab_size: number of token ids; the CLI links it from the data module's tokenizer.
        block_size: context length; the CLI links it to the data module's window length.
        n_layer: overrides the preset's number of layers.
        n_head: overrides the preset's number of attention heads.
        n_embd: overrides the preset's width.
        dropout: dropout on attention and residual branches.
        learning_rate: peak learning rate, reached after warmup.
        min_lr_ratio: the cosine schedule ends at learning_rate * min_lr_ratio.
        warmup_steps: optimizer steps of linear warmup.
        weight_decay: AdamW decay on matrices and embeddings (never on norms).
        betas: AdamW betas.
        compile: compile the model with torch.compile (worth it on a GPU for long runs).
        init_from: a checkpoint whose weights start this run (fine-tuning), with a fresh optimizer and schedule;
            ignored when resuming with --ckpt_path. Token rows it lacks (e.g. chat tokens) start at the mean
            embedding.
    """

    def __init__(
        self,
        preset: str = "gpt2-124m",
        vocab_size: int = 50257,
        block_size: int = 1024,
        n_layer: int | None = None,
        n_head: int | None = None,
        n_embd: int | None = None,
        dropout: float = 0.0,
        learning_rate: float = 6e-4,
        min_lr_ratio: float = 0.1,
        warmup_steps: int = 700,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        compile: bool = False,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        overrides = {k: v for k, v in {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd}.items() if v is not None}
        self.config = GPTConfig.from_preset(
            preset, vocab_size=vocab_size, block_size=block_size, dropout=dropout, **overrides
        )
        self.model = GPT(self.config)
        self.val_nll = MeanMetric()  # token-weighted mean, exact across batches and ranks
        self.test_nll = MeanMetric()
        self.val_targets, self.test_targets = SumMetric(), SumMetric()
        # Next-token accuracy over the tokens that carry loss (the assistant's, in chat fine-tuning).
        accuracy = {
            "task": "multiclass",
            "num_classes": self.config.padded_vocab_size,
            "average": "micro",
            "ignore_index": IGNORE_INDEX,
        }
        self.val_acc, self.test_acc = Accuracy(**accuracy), Accuracy(**accuracy)
        self.tokens_seen = 0  # training tokens over all devices, kept across resumes
        self.flops_per_batch = 0  # read by Lightning's ThroughputMonitor for MFU; set by each step

    def on_fit_start(self) -> None:
        # Here, not in setup(): only now does the trainer know whether it resumed from a checkpoint. Loading copies
        # into the existing parameters, so the optimizer built before still holds the right tensors.
        if self.hparams.init_from and self.trainer.ckpt_path is None:
            load_pretrained(self.model, self.hparams.init_from)

    def configure_model(self) -> None:
        if self.hparams.compile and self.model._compiled_call_impl is None:
            self.model.compile()  # compiles in place: state-dict keys stay the same

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        return self.model(idx, targets)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor], flops_factor: int):
        x, y = batch  # (B, T), (B, T)
        self.flops_per_batch = self.model.flops_per_token(x.shape[1]) * x.numel() // 3 * flops_factor
        return self(x, y)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        _, loss = self._loss(batch, flops_factor=3)  # forward + backward
        self.tokens_seen += batch[0].numel() * self.trainer.world_size
        self.log("train_loss", loss, on_step=True, prog_bar=True)
        self.log("tokens_seen", float(self.tokens_seen), on_step=True)
        return loss

    def _metrics(self, stage: str) -> tuple[MeanMetric, Accuracy, SumMetric]:
        return getattr(self, f"{stage}_nll"), getattr(self, f"{stage}_acc"), getattr(self, f"{stage}_targets")

    def _eval_step(self, batch, stage: str) -> None:
        nll, accuracy, targets = self._metrics(stage)
        logits, loss = self._loss(batch, flops_factor=1)
        n_targets = int((batch[1] != IGNORE_INDEX).sum())  # a host sync, so only here and not in training
        if n_targets:  # a batch can hold no target at all (e.g. only prompts); its NaN loss must not count
            nll.update(loss, weight=n_targets)
            accuracy.update(logits.argmax(dim=-1), batch[1])
            targets.update(n_targets)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
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

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def configure_optimizers(self):
        total = self.trainer.estimated_stepping_batches
        if total == float("inf"):
            raise UserInputError("set --trainer.max_steps or --trainer.max_epochs: the cosine schedule needs an end.")
        optimizer, schedule = self.build_optimizer(int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def build_optimizer(self, total_steps: int):
        """AdamW and its warmup-cosine schedule from this module's hyperparameters (fused on CUDA)."""
        hp = self.hparams
        return adamw_warmup_cosine(
            self.parameters(),
            lr=hp.learning_rate,
            weight_decay=hp.weight_decay,
            betas=hp.betas,
            warmup_steps=hp.warmup_steps,
            total_steps=total_steps,
            min_lr_ratio=hp.min_lr_ratio,
            fused=self.device.type == "cuda",
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokens_seen"] = self.tokens_seen

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        problems = shape_mismatches(self.state_dict(), checkpoint.get("state_dict", {}))
        if problems:
            raise UserInputError(
                "the checkpoint holds a model of another shape than this run's: "
                + "; ".join(problems)
                + ". Use the model settings it was trained with (its hyperparameters are in the checkpoint), "
                "or start from scratch without --ckpt_path."
            )
        self.tokens_seen = checkpoint.get("tokens_seen", 0)
