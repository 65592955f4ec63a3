"""The reward model: the GPT with a scalar head, trained on preference pairs with the Bradley-Terry loss.

It reads the batches of `data_modules.UltraFeedback` (2B rows: the chosen answers, then the rejected ones) and
scores any (prompt, answer) rows collated by `data_modules.ultrafeedback.answer_rows` (`make-pairs` does).
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MeanMetric

from lightning_gpt.reward_head import rewards
from lightning_gpt.throughput import batch_tokens
from lightning_gpt.training.bradley_terry import bradley_terry
from lightning_gpt.training.language_model import GPTModule


class RewardModule(GPTModule):
    """A reward model: `rewards(x, y)` is one number per (prompt, answer) row, trained so that the chosen answer of
    each pair scores above the rejected one (Bradley-Terry: loss -log sigmoid(r_chosen - r_rejected)).

    Start it from a chat (SFT) checkpoint with --model.init_from: the transformer is loaded from it, the score
    head starts near zero. Logged: train_loss, train_accuracy (share of pairs ranked right), rewards/chosen,
    rewards/rejected, rewards/margins (means over the step's pairs); val_loss, val_accuracy, train_eval_loss;
    test_loss, test_accuracy.

    Args:
        **kwargs: the language model's settings, see `GPTModule` (preset, block_size, learning_rate, init_from, ...).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.score_head = nn.Linear(self.config.n_embd, 1)
        nn.init.normal_(self.score_head.weight, std=0.02)  # as the GPT's own layers; rewards start near 0
        nn.init.zeros_(self.score_head.bias)  # no gradient reaches it (a shift cancels in every margin)
        # Means over pairs, exact across batches and ranks.
        self.pair_metrics = nn.ModuleDict(
            {name: MeanMetric() for name in ("val_loss", "val_accuracy", "test_loss", "test_accuracy")}
        )
        self.pair_metrics["train_eval_loss"] = MeanMetric()

    def rewards(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: (N, T) rows as `answer_rows` collates them. Returns (N,) float32 rewards (lightning_gpt/reward_head.py:
        the hidden state at each row's last scored position, through the score head)."""
        return rewards(self.model, self.score_head, x, y)

    def pair_losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """For a batch of B pairs (2B rows, chosen first): per-pair losses, correctness, chosen and rejected
        rewards, each (B,)."""
        chosen, rejected = self.rewards(x, y).chunk(2)  # (B,), (B,): split_pair_batch's layout
        losses, correct = bradley_terry(chosen, rejected)
        return losses, correct, chosen, rejected

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        """batch: (x, y) or (x, y, step_pairs, pair_ids), step_pairs being the pairs of the whole optimizer step
        over every micro-batch and rank (data_modules.UltraFeedback counts them)."""
        x, y = batch[0], batch[1]
        real_tokens = batch_tokens(batch)  # padding excluded
        self.flops_per_batch = self.model.flops_per_token(x.shape[1]) * real_tokens  # forward + backward
        losses, correct, chosen, rejected = self.pair_losses(x, y)
        loss_sum, pairs = losses.sum(), chosen.shape[0]
        if len(batch) > 2:
            # As GPTModule does with targets: undo Lightning's division by the accumulation and DDP's mean over
            # ranks, so that the step's gradient is that of the mean loss over all its pairs.
            step_pairs = batch[2].flatten()[0].clamp(min=1)
            loss = loss_sum * self.trainer.accumulate_grad_batches * self.trainer.world_size / step_pairs
        else:  # batches made by hand: the micro-batch's own mean
            loss = loss_sum / pairs
        n = torch.full((), float(pairs), device=x.device)  # a kernel argument, no host-to-device copy
        sums = torch.stack([loss_sum, n, correct.sum(), chosen.sum(), rejected.sum()]).detach()
        self._track(sums, loss_sum.detach() / pairs)
        self.tokens_seen += real_tokens * self.trainer.world_size
        return loss

    def step_metrics(self, sums: torch.Tensor) -> dict[str, float]:
        loss, pairs, correct, chosen, rejected = sums.tolist()
        return {
            "train_loss": loss / pairs,
            "train_accuracy": correct / pairs,
            "rewards/chosen": chosen / pairs,
            "rewards/rejected": rejected / pairs,
            "rewards/margins": (chosen - rejected) / pairs,
        }

    def _eval_pairs(self, batch, loss_name: str, accuracy_name: str | None) -> None:
        losses, correct, _, _ = self.pair_losses(batch[0], batch[1])
        self.pair_metrics[loss_name].update(losses)  # each pair weighs 1
        if accuracy_name:
            self.pair_metrics[accuracy_name].update(correct)

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == 1:  # the fixed sample of training batches: the train side of the train/val gap
            self._eval_pairs(batch, "train_eval_loss", None)
        else:
            self._eval_pairs(batch, "val_loss", "val_accuracy")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_pairs(batch, "test_loss", "test_accuracy")

    def _log_pairs(self, *names: str) -> None:
        for name in names:
            metric = self.pair_metrics[name]
            if metric.update_called:
                self.log(name, metric.compute(), prog_bar=name.endswith("accuracy"))
                metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_pairs("val_loss", "val_accuracy", "train_eval_loss")

    def on_test_epoch_end(self) -> None:
        self._log_pairs("test_loss", "test_accuracy")
