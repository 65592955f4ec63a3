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


# A matrix at least this many times as wide as it is tall (or tall as wide) takes the Newton-Schulz iteration in its
# Gram form (`_gram_newton_schulz`); from 1.625 its product count is below the plain iteration's, and 2 leaves the
# fast recipe's square attention projection on the plain one. benchmarks/optimizer_step.py sets it to inf for the plain
# side of its comparison.
GRAM_FORM_MIN_RATIO = 2.0


def _orthogonalized(update: torch.Tensor, ns_coefficients, ns_steps: int, eps: float) -> torch.Tensor:
    """torch.optim.Muon's Newton-Schulz iteration (its coefficients and steps), in float32: the nearest
    semi-orthogonal matrix to `update` (m, n), roughly."""
    a, b, c = ns_coefficients
    x = update.float()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T  # (m, n), m <= n: the Gram matrix below is the smaller one
    x = x / x.norm().clamp(min=eps)  # spectral norm <= 1
    if x.shape[1] >= GRAM_FORM_MIN_RATIO * x.shape[0]:
        x = _gram_newton_schulz(x, a, b, c, ns_steps)
    else:
        for _ in range(ns_steps):
            gram = x @ x.T  # (m, m)
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def _gram_newton_schulz(x: torch.Tensor, a: float, b: float, c: float, ns_steps: int) -> torch.Tensor:
    """The same iteration for a wide x (m, n), n >= 2m, carried out on (m, m) matrices. Each step is
    x <- q(G) x with G = x x^T and q(G) = aI + bG + cG^2, so G <- q(G) G q(G) and x is the product of the q's times
    the x it started from: (m, m) products instead of two (m, m) x (m, n) ones each step. The product's rounding
    grows with its norm (up to a^steps) on low-rank updates, so x and G are rebuilt once, after the third step:
    then within 2x of the plain iteration's float32 error against float64, at 0.65-0.7x its time for the fast
    recipe's matrices at 4 x 256 on the CPU."""
    eye = torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
    gram, total = x @ x.T, None  # (m, m)
    for step in range(ns_steps):
        q = torch.addmm(torch.add(eye, gram, alpha=b / a), gram, gram, beta=a, alpha=c)  # aI + bG + cG^2
        total = q if total is None else q @ total
        if step + 1 == ns_steps:
            break
        if step == 2:  # rebuild
            x, total = total @ x, None
            gram = x @ x.T
        else:
            gram = q @ gram @ q
    return total @ x


class Muon(torch.optim.Muon):
    """torch.optim.Muon (its settings, checks and state), with the Newton-Schulz iteration in float32 off CUDA.

    torch runs the iteration in bfloat16, which is right on a GPU; a CPU without bfloat16 matmuls emulates them,
    5 times slower than float32 on the 2-core VM of docs/benchmarks.md, which made the optimizer step a third of a
    training step. On CUDA this is torch's own step."""

    @torch.no_grad()
    def step(self, closure=None):
        if all(p.device.type == "cuda" for group in self.param_groups for p in group["params"]):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = _orthogonalized(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-lr * _muon_lr_scale(group["adjust_lr_fn"], p.shape))
        return loss


def _muon_lr_scale(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's scale of the learning rate for an (A, B) matrix."""
    A, B = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(A, B))
    return math.sqrt(max(1, A / B))  # "original" (Keller Jordan's), torch's default


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
