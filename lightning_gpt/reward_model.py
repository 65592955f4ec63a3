"""The reward model: the GPT with a scalar head, trained on preference pairs with the Bradley-Terry loss.

It reads the batches of `data_modules.UltraFeedback` (2B rows: the chosen answers, then the rejected ones) and
scores any (prompt, answer) rows collated by `data_modules.ultrafeedback.answer_rows` (`make-pairs` does).
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MeanMetric

from lightning_gpt.bradley_terry import bradley_terry
from lightning_gpt.chat import END_OF_TURN
from lightning_gpt.checkpoint import module_from_checkpoint, stored_tokenizer
from lightning_gpt.checkpoint_io import load_checkpoint_file
from lightning_gpt.errors import UserInputError
from lightning_gpt.lit_module import GPTModule
from lightning_gpt.model import IGNORE_INDEX
from lightning_gpt.throughput import batch_tokens
from lightning_gpt.tokenizer import AnyTokenizer

SCORE_HEAD = "score_head.weight"  # the state-dict key that tells a reward checkpoint from a language model's


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
        """x, y: (N, T) rows as `answer_rows` collates them. Returns (N,) float32 rewards.

        The head reads the final hidden state at each row's last scored position (its last y != IGNORE_INDEX).
        There x holds the token before the answer's last one: causal attention has read the prompt and the whole
        answer but that last token (its <|end|> when the answer finished), and nothing after it, so the right
        padding never changes a reward. A row with no scored token reads position 0.
        """
        hidden = self.model.hidden_states(x)  # (N, T, C)
        T = y.shape[1]
        positions = torch.arange(T, device=y.device).expand_as(y)  # (N, T)
        last = torch.where(y != IGNORE_INDEX, positions, 0).amax(dim=1)  # (N,)
        states = hidden[torch.arange(y.shape[0], device=y.device), last]  # (N, C)
        return self.score_head(states).squeeze(-1).float()  # (N,)

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


def load_reward_model(path: str, device: str = "cpu") -> tuple[RewardModule, AnyTokenizer]:
    """A reward checkpoint's module, in eval mode on `device` (bfloat16 on CUDA), and the chat tokenizer it was
    trained with (GPT-2's for checkpoints that store none); for use
    outside the Trainer. Only weights are unpickled.

    Raises:
        UserInputError: naming --reward_ckpt, when the file cannot be read or is not a reward model's checkpoint
            (a language model's, say).
    """
    checkpoint = load_checkpoint_file(path, map_location=device, flag="--reward_ckpt")
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or SCORE_HEAD not in state:
        raise UserInputError(
            f"--reward_ckpt {path} is not a reward model's checkpoint (it holds no score head); pass one written by "
            "lightning-gpt fit -c configs/reward_ultrafeedback.yaml."
        )
    problem = f"--reward_ckpt {path} is not a usable reward checkpoint ({{reason}})."
    module = module_from_checkpoint(RewardModule, checkpoint, problem)
    module = module.to(device).eval()
    if device.startswith("cuda"):
        module = module.to(torch.bfloat16)
    tokenizer = stored_tokenizer(checkpoint)
    if (
        tokenizer is None
        or END_OF_TURN not in tokenizer.special_tokens
        or tokenizer.vocab_size > module.config.vocab_size
    ):
        raise UserInputError(
            f"--reward_ckpt {path}: a vocabulary of {module.config.vocab_size} tokens with no chat tokenizer; a reward "
            "model is trained from a chat (SFT) checkpoint."
        )
    return module, tokenizer
