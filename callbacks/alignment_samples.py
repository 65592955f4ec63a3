"""During DPO: answers sampled for held-out prompts at each validation, with the curves that show whether alignment
works: their mean reward (rising), their KL to the reference (small) and the policy's entropy (not collapsing)."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from callbacks.text_samples import sampling_from
from data_modules.ultrafeedback import answer_rows
from lightning_gpt.chat import END_OF_TURN
from lightning_gpt.generate import SamplingSettings, generate
from lightning_gpt.loading import load_reward_model
from lightning_gpt.model import GPT
from lightning_gpt.reward_head import RewardModel
from lightning_gpt.training.preference_losses import answer_logps, answer_positions, entropy_and_kl


@torch.no_grad()
def sample_metrics(
    policy: GPT,
    reference: GPT,
    prompts: list[list[int]],
    end_id: int,
    pad_id: int,
    max_new_tokens: int,
    reward_model: RewardModel | None = None,
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, float]:
    """Samples one answer per prompt from `policy` at temperature 1 (no top-k or top-p: the estimates below are of
    the policy's own distribution) and returns, averaged over the answers:

    - kl: log pi(answer) - log pi_ref(answer), a Monte Carlo estimate of the sequence KL(pi || pi_ref);
    - entropy: the policy's exact next-token entropy, averaged over the answers' tokens;
    - reward: the reward model's score (when one is given);
    - length: answer tokens, the closing <|end|> included.
    """
    settings = SamplingSettings(max_new_tokens=max_new_tokens, temperature=1.0, stop_ids=(end_id,), seed=seed)
    answers = generate(policy, prompts, settings)
    # An answer that stopped early ended by sampling <|end|> (the only stop id): it belongs to the answer scored.
    answers = [a + [end_id] if len(a) < max_new_tokens else a for a in answers]
    totals = {"kl": 0.0, "entropy": 0.0, "reward": 0.0, "tokens": 0.0}
    for start in range(0, len(prompts), batch_size):
        rows = list(zip(prompts[start : start + batch_size], answers[start : start + batch_size], strict=True))
        x, y = (t.to(policy.tok_emb.weight.device) for t in answer_rows(rows, pad_id))  # (n, L)
        select, targets, row_ids = answer_positions(y)
        logits = policy.logits(x, select=select)  # (tokens, V)
        policy_logps, _ = answer_logps(logits, targets, row_ids, len(rows))
        reference_logps, _ = answer_logps(reference.logits(x, select=select), targets, row_ids, len(rows))
        entropy, _ = entropy_and_kl(logits)
        totals["kl"] += float((policy_logps - reference_logps).sum())
        totals["entropy"] += float(entropy)
        totals["tokens"] += len(targets)
        if reward_model is not None:
            totals["reward"] += float(reward_model.rewards(x, y).sum())
    n = len(prompts)
    metrics = {"kl": totals["kl"] / n, "entropy": totals["entropy"] / totals["tokens"], "length": totals["tokens"] / n}
    if reward_model is not None:
        metrics["reward"] = totals["reward"] / n
    return metrics


class AlignmentSamples(L.Callback):
    """At each validation of a DPO run, samples answers for a fixed set of held-out prompts (spread over the
    validation pairs) and logs `samples/reward` (with `reward_ckpt`), `samples/kl`, `samples/entropy` and
    `samples/length` (see `sample_metrics`). Without `reward_ckpt` only the last three are logged.

    Args:
        reward_ckpt: a reward model's checkpoint (lightning-gpt fit -c configs/reward_ultrafeedback.yaml).
        num_prompts: held-out prompts answered at each validation (the same ones each time).
        max_new_tokens: the longest answer.
        batch_size: answers scored per forward pass.
        seed: fixes the sampling, so that validations differ only by what the policy learned.
    """

    def __init__(
        self,
        reward_ckpt: str | None = None,
        num_prompts: int = 64,
        max_new_tokens: int = 256,
        batch_size: int = 16,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.reward_ckpt, self.num_prompts, self.max_new_tokens = reward_ckpt, num_prompts, max_new_tokens
        self.batch_size, self.seed = batch_size, seed
        self.reward_model: RewardModel | None = None
        self.last_metrics: dict[str, float] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Read now, before any training, so that a wrong path fails at once and not after the first validation.
        if stage == "fit" and self.reward_ckpt and trainer.is_global_zero and self.reward_model is None:
            self.reward_model, _ = load_reward_model(self.reward_ckpt, device="cpu")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        dataset = _validation_pairs(trainer)
        if trainer.sanity_checking or not trainer.is_global_zero or dataset is None or tokenizer is None:
            return
        if not hasattr(pl_module, "reference_model"):
            return  # not a DPO run: no reference to compare with
        picks = np.unique(np.linspace(0, len(dataset.prompt) - 1, num=self.num_prompts).round().astype(int))
        prompts = [dataset.pair(int(i))[0].tolist() for i in picks]
        room = pl_module.model.config.block_size - max(len(p) for p in prompts)
        if self.reward_model is not None:
            self.reward_model.to(pl_module.device)
        with sampling_from(trainer, pl_module):
            self.last_metrics = sample_metrics(
                pl_module.model,
                pl_module.reference_model(),
                prompts,
                end_id=tokenizer.token_id(END_OF_TURN),
                pad_id=tokenizer.eot_id,
                max_new_tokens=max(1, min(self.max_new_tokens, room)),
                reward_model=self.reward_model,
                batch_size=self.batch_size,
                seed=self.seed,
            )
        step = trainer.fit_loop.epoch_loop._batches_that_stepped  # the step Lightning logs val_loss at
        for logger in trainer.loggers:
            logger.log_metrics({f"samples/{k}": v for k, v in self.last_metrics.items()}, step=step)


def _validation_pairs(trainer: L.Trainer):
    """The validation split's preference pairs (data_modules.ultrafeedback.PairBatches), or None."""
    loaders = trainer.val_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
    dataset = getattr(loader, "dataset", None)
    return dataset if hasattr(dataset, "pair") and hasattr(dataset, "prompt") else None
