"""The optimizers: AdamW with decay/no-decay groups, or Muon on the hidden weight matrices with AdamW on the rest (one
optimizer object, as Lightning's automatic optimization needs), under a warmup-cosine learning rate that is a closed
form of the step; the checks of the settings they depend on, and the reading of schedule states from older
checkpoints."""

from __future__ import annotations

import math
from collections.abc import Iterable

import lightning as L
import torch
from torch.optim.lr_scheduler import LambdaLR

from lightning_gpt.errors import UserInputError
from lightning_gpt.training.muon import Muon


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """The learning-rate factor at optimizer step `step`: linear warmup to 1, then cosine decay to `min_lr_ratio`
    at `total_steps`, and flat after it. A pure function of its arguments, so a run resumed with another
    `total_steps` follows the schedule of a run planned that long from the start."""
    warmup = min(warmup_steps, max(total_steps - 1, 0))  # a run shorter than its warmup still ends in decay
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def adamw_warmup_cosine(
    parameters: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
    fused: bool,
) -> tuple[torch.optim.AdamW, LambdaLR]:
    """Decay on matrices and embeddings, never on norm gains; the schedule is stepped once per optimizer step.

    The schedule is a LambdaLR over a plain function: its checkpointed state is only the step count (LambdaLR
    saves the attributes of callable objects, which would bring back the old `total_steps` on resume). torch's
    SequentialLR(LinearLR, CosineAnnealingLR) keeps its period in its state and cycles the rate back up when a
    resumed run is longer than planned.
    """
    optimizer = torch.optim.AdamW(_adamw_groups(parameters, weight_decay), lr=lr, betas=tuple(betas), fused=fused)
    return optimizer, _warmup_cosine_schedule(optimizer, warmup_steps, total_steps, min_lr_ratio)


def _adamw_groups(parameters: Iterable[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    params = [p for p in parameters if p.requires_grad]
    # The names label LearningRateMonitor's curves (learning_rate/decayed, ...) instead of pg1, pg2.
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, "name": "decayed"},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "name": "not_decayed"},
    ]


def _warmup_cosine_schedule(optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> LambdaLR:
    """One factor of the step for every group: each group's rate is its own peak times it."""

    def factor(step: int) -> float:
        return warmup_cosine(step, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio)

    return LambdaLR(optimizer, factor)


def muon_adamw_warmup_cosine(
    matrices: list[torch.nn.Parameter],
    others: Iterable[torch.nn.Parameter],
    *,
    muon_lr: float,
    muon_momentum: float,
    muon_weight_decay: float,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
    fused: bool,
) -> tuple[MuonWithAdamW, LambdaLR]:
    """Muon on `matrices` (the hidden 2-D weights), AdamW on `others` (embeddings, norms, heads), as modded-nanogpt
    trains; one warmup-cosine factor scales both peaks."""
    muon = Muon(
        [{"params": [p for p in matrices if p.requires_grad], "name": "muon"}],
        lr=muon_lr,
        momentum=muon_momentum,
        weight_decay=muon_weight_decay,
    )
    adamw = torch.optim.AdamW(_adamw_groups(others, weight_decay), lr=lr, betas=tuple(betas), fused=fused)
    optimizer = MuonWithAdamW(muon, adamw)
    return optimizer, _warmup_cosine_schedule(optimizer, warmup_steps, total_steps, min_lr_ratio)


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon and AdamW as one optimizer. Lightning's automatic optimization (accumulation, clipping, precision
    plugins, DDP, checkpoints) drives exactly one optimizer object; this one's param_groups are Muon's then AdamW's
    (the same dicts, so the schedule and clipping reach both) and its state is theirs, so its state_dict is the
    usual one: a checkpoint holds Muon's momentum buffers and AdamW's moments, and a resume restores both."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer) -> None:
        self.muon, self.adamw = muon, adamw
        super().__init__([*muon.param_groups, *adamw.param_groups], {})
        self._share()

    def _share(self) -> None:
        """Points the two optimizers at this one's groups and state (load_state_dict replaces both)."""
        n = len(self.muon.param_groups)
        self.muon.param_groups, self.adamw.param_groups = self.param_groups[:n], self.param_groups[n:]
        self.muon.state = self.adamw.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._share()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss


OPTIMIZERS = ("adamw", "muon")


def check_optimizer_settings(
    learning_rate: float,
    min_lr_ratio: float,
    warmup_steps: int,
    weight_decay: float,
    betas,
    optimizer: str = "adamw",
    muon_learning_rate: float = 0.02,
    muon_momentum: float = 0.95,
    muon_weight_decay: float = 0.0,
) -> None:
    problems = []
    if optimizer not in OPTIMIZERS:
        problems.append(f"--model.optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
    if not math.isfinite(muon_learning_rate) or muon_learning_rate <= 0:
        problems.append(f"--model.muon_learning_rate must be a positive number, got {muon_learning_rate}")
    if not 0.0 <= muon_momentum < 1.0:
        problems.append(f"--model.muon_momentum must be in [0, 1), got {muon_momentum}")
    if not math.isfinite(muon_weight_decay) or muon_weight_decay < 0:
        problems.append(f"--model.muon_weight_decay must be >= 0, got {muon_weight_decay}")
    if not math.isfinite(learning_rate) or learning_rate <= 0:
        problems.append(f"--model.learning_rate must be a positive number, got {learning_rate}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        problems.append(f"--model.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if warmup_steps < 0:
        problems.append(f"--model.warmup_steps must be >= 0, got {warmup_steps}")
    if not math.isfinite(weight_decay) or weight_decay < 0:
        problems.append(f"--model.weight_decay must be >= 0, got {weight_decay}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        problems.append(f"--model.betas must be two numbers in [0, 1), got {list(betas)}")
    if problems:
        raise UserInputError("; ".join(problems) + ".")


def closed_form_schedule_state(state: dict, learning_rate: float) -> dict:
    """Checkpoints written before the closed-form schedule hold a SequentialLR's state; its step count is all
    the LambdaLR needs (on_train_start sets the rate of that step)."""
    if "lr_lambdas" in state:
        return state
    groups = len(state["_last_lr"])
    return {
        "base_lrs": [learning_rate] * groups,
        "last_epoch": state["last_epoch"],
        "_step_count": state["last_epoch"] + 1,
        "_is_initial": False,
        "_get_lr_called_within_step": False,
        "_last_lr": state["_last_lr"],
        "lr_lambdas": [None] * groups,
    }


def check_validation_between_steps(trainer: L.Trainer) -> None:
    """Validation (and the checkpoints it triggers) must fall between optimizer steps: a checkpoint taken inside
    an accumulation window would lose the gradients accumulated so far, and a resume from it would differ."""
    k = trainer.accumulate_grad_batches
    batches = trainer.num_training_batches
    if k > 1 and batches != float("inf") and batches % k:
        raise UserInputError(
            f"--trainer.limit_train_batches gives {batches} training batches per epoch; with "
            f"--trainer.accumulate_grad_batches {k} it must be a multiple of {k}, so every optimizer step is whole."
        )
    if k > 1 and isinstance(trainer.val_check_batch, int) and trainer.val_check_batch % k:
        raise UserInputError(
            f"--trainer.val_check_interval counts training batches ({trainer.val_check_batch}); with "
            f"--trainer.accumulate_grad_batches {k} it must be a multiple of {k}, so that validation and its "
            "checkpoints fall between optimizer steps."
        )
