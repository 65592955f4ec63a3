"""The reward model: the GPT with a scalar head, trained on preference pairs with the Bradley-Terry loss.

It reads the batches of `data_modules.UltraFeedback` (2B rows: the chosen answers, then the rejected ones) and
scores any (prompt, answer) rows collated by `data_modules.ultrafeedback.answer_rows` (`make-pairs` does).
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MeanMetric

from lightning_gpt.batch import Batch
from lightning_gpt.reward_head import rewards
from lightning_gpt.training.base import TrainingModule
from lightning_gpt.training.bradley_terry import bradley_terry


class RewardModule(TrainingModule):
    """A reward model: `rewards(x, y)` is one number per (prompt, answer) row, trained so that the chosen answer of
    each pair scores above the rejected one (Bradley-Terry: loss -log sigmoid(r_chosen - r_rejected)).

    Start it from a chat (SFT) checkpoint with --model.init_from: the transformer is loaded from it, the score
    head starts near zero. Logged: train_loss, train_accuracy (share of pairs ranked right), rewards/chosen,
    rewards/rejected, rewards/margins (means over the step's pairs); val_loss, val_accuracy, train_eval_loss;
    test_loss, test_accuracy.

    Args:
        **kwargs: the model and optimizer settings, see `TrainingModule` (preset, block_size, learning_rate,
            init_from, ...).
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

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        self.count_batch(batch, self.model.flops_per_token(batch.inputs.shape[1]))  # forward + backward
        losses, correct, chosen, rejected = self.pair_losses(batch.inputs, batch.targets)
        pairs = chosen.shape[0]
        sums = {
            "loss": losses.sum(),
            "pairs": torch.full((), float(pairs), device=losses.device),  # a kernel argument, no host-to-device copy
            "correct": correct.sum(),
            "rewards/chosen": chosen.sum(),
            "rewards/rejected": rejected.sum(),
        }
        self.track(sums, losses.detach().mean())
        return self.step_loss(losses.sum(), pairs, batch)

    def step_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        pairs = max(sums["pairs"], 1.0)
        return {
            "train_loss": sums["loss"] / pairs,
            "train_accuracy": sums["correct"] / pairs,
            "train_rewards/chosen": sums["rewards/chosen"] / pairs,
            "train_rewards/rejected": sums["rewards/rejected"] / pairs,
            "train_rewards/margins": (sums["rewards/chosen"] - sums["rewards/rejected"]) / pairs,
        }

    def _eval_pairs(self, batch: Batch, loss_name: str, accuracy_name: str | None) -> None:
        losses, correct, _, _ = self.pair_losses(batch.inputs, batch.targets)
        self.pair_metrics[loss_name].update(losses)  # each pair weighs 1
        if accuracy_name:
            self.pair_metrics[accuracy_name].update(correct)

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == 1:  # the fixed sample of training batches: the train side of the train/val gap
            self._eval_pairs(batch, "train_eval_loss", None)
        else:
            self._eval_pairs(batch, "val_loss", "val_accuracy")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
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
