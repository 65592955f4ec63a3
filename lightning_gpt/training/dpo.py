"""Direct preference optimisation: the chat model learns from preference pairs, against a frozen copy of itself."""

from __future__ import annotations

import logging
import time

import torch
from torch import nn
from torchmetrics import MeanMetric

from lightning_gpt.batch import Batch
from lightning_gpt.checkpoint import load_pretrained
from lightning_gpt.errors import UserInputError
from lightning_gpt.model import GPT
from lightning_gpt.training.base import TrainingModule
from lightning_gpt.training.preference_losses import (
    LOSS_TYPES,
    answer_logps,
    answer_positions,
    dpo_losses,
    entropy_and_kl,
)

log = logging.getLogger(__name__)

# Per-pair means logged at validation and test (TRL's names, with the stage in front), then per-token ones.
PAIR_METRICS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)
TOKEN_METRICS = ("entropy", "kl")


class DPOModule(TrainingModule):
    """DPO (or IPO) on preference pairs, from a chat model: the policy starts from `init_from` and a frozen copy of
    those weights is the reference. Batches come from `data_modules.UltraFeedback`: (2B, L) rows, the chosen
    answers first, then the rejected ones; only answer tokens are scored.

    Logged (TRL's names; `val_` / `test_` in front at validation and test): the loss, rewards/chosen and
    rewards/rejected (beta times the log-probability ratio of an answer between policy and reference),
    rewards/margins (chosen minus rejected), rewards/accuracies (the share of pairs whose chosen reward is the
    larger), logps/chosen and logps/rejected (the policy's summed log-probabilities of the answers), train_entropy
    and val_entropy (the policy's mean next-token entropy on the chosen answers) and train_kl and val_kl (its mean
    per-token KL to the reference there; in training only while the reference runs live, i.e. without
    precompute_reference).

    Args:
        beta: strength of the pull towards the reference: the inverse temperature of the implicit reward.
        loss_type: "sigmoid" (DPO) or "ipo" (on per-token mean log-probabilities, as in TRL).
        label_smoothing: the chance that a pair's preference is wrong (conservative DPO; sigmoid only).
        precompute_reference: compute the reference's log-probabilities of every training pair once, before the
            first step (and keep them in the checkpoint), instead of a reference forward pass in every step.
        **kwargs: the model and optimizer settings, see `TrainingModule` (init_from: the chat model to align).
    """

    init_role = "policy"  # init_from also fills the frozen reference (_build_reference)

    def __init__(
        self,
        beta: float = 0.1,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        precompute_reference: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not beta > 0:
            raise UserInputError(f"--model.beta must be positive, got {beta}.")
        if loss_type not in LOSS_TYPES:
            raise UserInputError(f"--model.loss_type must be one of {', '.join(LOSS_TYPES)}, not {loss_type!r}.")
        if not 0 <= label_smoothing < 0.5:
            raise UserInputError(f"--model.label_smoothing must be in [0, 0.5), got {label_smoothing}.")
        if label_smoothing and loss_type != "sigmoid":
            raise UserInputError("--model.label_smoothing applies to --model.loss_type sigmoid only; set it to 0.")
        # The reference stays out of the module tree (a list hides it): it is in no state dict, so the checkpoint
        # holds the policy alone and works with generate/chat; the optimizer and DDP never see it.
        self._reference: list[GPT] = []
        self._reference_logps: torch.Tensor | None = None  # (training pairs, 2): chosen, rejected
        self._reference_pairs: str | None = None  # the fingerprint of the pairs the table was computed for
        self._reference_fingerprint: float | None = None
        self.train_eval_loss = MeanMetric()  # the fixed sample of training pairs, scored like validation
        self.eval_metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict({_key(name): MeanMetric() for name in (*PAIR_METRICS, *TOKEN_METRICS)})
                for stage in ("val", "test")
            }
        )

    # --- the reference model ------------------------------------------------------------------------------------

    def reference_model(self) -> GPT:
        """The frozen reference (eval mode, no gradients), on this module's device; built on first use."""
        if not self._reference:
            self._reference = [self._build_reference()]
        reference = self._reference[0]
        weight = next(self.model.parameters())
        if reference.tok_emb.weight.device != weight.device or reference.tok_emb.weight.dtype != weight.dtype:
            reference.to(device=weight.device, dtype=weight.dtype)
        return reference

    def _build_reference(self) -> GPT:
        path = self.hparams.init_from
        if not path:
            raise UserInputError(
                "DPO needs the chat model it starts from, as policy and as reference: pass --model.init_from "
                "SFT.ckpt (a checkpoint of lightning-gpt fit -c configs/sft_ultrachat.yaml)."
            )
        reference = GPT(self.config)
        # From the file, also in a fresh run where the policy was just loaded from it: a resumed policy has moved
        # on, and a policy in bf16-true weights is not the file's float32.
        load_pretrained(reference, path, role="reference (frozen)")
        fingerprint = weights_fingerprint(reference)
        if self._reference_fingerprint is not None and fingerprint != self._reference_fingerprint:
            raise UserInputError(
                f"--model.init_from {path} is not the model this run started from (its weights changed since): the "
                "reference would differ. Put the original file back at that path."
            )
        self._reference_fingerprint = fingerprint
        reference.requires_grad_(False).eval()
        if self.hparams.compile:
            reference.compile()
        return reference

    def on_fit_start(self) -> None:
        super().on_fit_start()  # loads init_from into the policy on a fresh run
        self.reference_model()

    def on_train_start(self) -> None:
        super().on_train_start()
        if not self.hparams.precompute_reference:
            self._reference_logps = self._reference_pairs = None
            return
        pairs = self._training_pairs()
        if self._reference_logps is not None and self._reference_pairs != pairs.fingerprint():
            # A resume on other pairs (--data.path, the length limits, the tokenizer): the stored table would give
            # the reference log-probabilities of other answers.
            log.warning(
                "the training pairs differ from those of the checkpoint's reference log-probabilities (other data or "
                "--data settings since): computing them again"
            )
            self._reference_logps = None
        if self._reference_logps is None:
            self._reference_logps = self._precompute_reference_logps(pairs)
            self._reference_pairs = pairs.fingerprint()
        else:  # restored from the checkpoint, for these very pairs
            self._reference_logps = self._reference_logps.to(self.device)

    def _training_pairs(self):
        """The training split's pairs (data_modules.ultrafeedback.PairBatches)."""
        dataset = self.trainer.train_dataloader.dataset
        if not hasattr(dataset, "batches") or not hasattr(dataset, "fingerprint"):
            raise UserInputError(
                "--model.precompute_reference needs preference pairs from data_modules.UltraFeedback; set it to "
                "false for other data."
            )
        return dataset

    @torch.no_grad()
    def _precompute_reference_logps(self, dataset) -> torch.Tensor:
        """The reference's log-probabilities of both answers of every training pair, (pairs, 2), from the very
        batches training will see (so equal to what the live reference gives); each rank computes a share."""
        reference, rank, world = self.reference_model(), self.trainer.global_rank, self.trainer.world_size
        logps = torch.zeros(len(dataset.prompt), 2, device=self.device)
        started = time.monotonic()
        log.info("computing the reference log-probabilities of %d training pairs", len(logps))
        with self.trainer.precision_plugin.forward_context():
            for index in range(rank, len(dataset), world):
                batch = dataset[index]
                x, y = batch.inputs.to(self.device), batch.targets.to(self.device)
                pairs = torch.as_tensor(dataset.batches[index], device=self.device)
                select, targets, rows = answer_positions(y)
                sums, _ = answer_logps(reference.logits(x, select=select), targets, rows, len(y))  # (2B,)
                logps[pairs] = torch.stack(sums.chunk(2), dim=1).float()  # (B, 2)
        logps = self.trainer.strategy.reduce(logps, reduce_op="sum")
        log.info("reference log-probabilities done in %.1f s", time.monotonic() - started)
        return logps

    # --- the loss ---------------------------------------------------------------------------------------------

    def pair_terms(self, x: torch.Tensor, y: torch.Tensor, pair_ids: torch.Tensor | None = None):
        """x, y (2B, L): a batch of pairs. Returns the PairTerms, the policy's summed answer log-probabilities
        (2B,), and the chosen answers' summed entropy, KL (None without a live reference) and token count."""
        n_rows, half = x.shape[0], x.shape[0] // 2
        select, targets, rows = answer_positions(y)  # logits only where an answer token is predicted
        logits = self.model.logits(x, select=select)  # (n, V)
        logps, lengths = answer_logps(logits, targets, rows, n_rows)  # (2B,) each
        reference_logits = None
        if pair_ids is not None and self._reference_logps is not None:
            reference_logps = self._reference_logps[pair_ids].T.flatten()  # (2B,): chosen, then rejected
        else:
            with torch.no_grad():
                reference_logits = self.reference_model().logits(x, select=select)  # (n, V)
                reference_logps, _ = answer_logps(reference_logits, targets, rows, n_rows)
        policy, reference = logps, reference_logps
        if self.hparams.loss_type == "ipo":  # IPO compares per-token means, so long answers do not dominate
            policy, reference = policy / lengths.clamp(min=1), reference / lengths.clamp(min=1)
        terms = dpo_losses(
            policy[:half],
            policy[half:],
            reference[:half],
            reference[half:],
            beta=self.hparams.beta,
            loss_type=self.hparams.loss_type,
            label_smoothing=self.hparams.label_smoothing,
        )
        chosen = int(lengths[:half].sum())  # the chosen rows' tokens come first (row-major order): a host sync
        chosen_reference = reference_logits[:chosen] if reference_logits is not None else None
        entropy, kl = entropy_and_kl(logits[:chosen], chosen_reference)
        return terms, logps.detach(), (entropy, kl, lengths[:half].sum())

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        precomputed = batch.pair_ids is not None and self._reference_logps is not None
        # Forward and backward of the policy, plus the reference's forward when it runs live.
        self.count_batch(batch, self.model.flops_per_token(batch.inputs.shape[1]) * (1 if precomputed else 4 / 3))
        terms, logps, (entropy, kl, tokens) = self.pair_terms(batch.inputs, batch.targets, batch.pair_ids)
        half = batch.rows // 2
        chosen, rejected = terms.chosen_rewards, terms.rejected_rewards
        sums = {
            "loss": terms.losses.sum(),
            "pairs": torch.full((), float(half), device=chosen.device),  # a kernel argument, no host-to-device copy
            "rewards/chosen": chosen.sum(),
            "rewards/rejected": rejected.sum(),
            "rewards/accuracies": (chosen > rejected).float().sum(),
            "logps/chosen": logps[:half].sum(),
            "logps/rejected": logps[half:].sum(),
            "entropy": entropy,
            "chosen_tokens": tokens.float(),
        }
        if kl is not None:  # only while the reference runs live
            sums.update(kl=kl, kl_tokens=tokens.float())
        self.track(sums, terms.losses.detach().mean())
        return self.step_loss(terms.losses.sum(), half, batch)

    def step_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        pairs = max(sums["pairs"], 1.0)
        metrics = {
            "train_loss": sums["loss"] / pairs,
            "train_rewards/chosen": sums["rewards/chosen"] / pairs,
            "train_rewards/rejected": sums["rewards/rejected"] / pairs,
            "train_rewards/margins": (sums["rewards/chosen"] - sums["rewards/rejected"]) / pairs,
            "train_rewards/accuracies": sums["rewards/accuracies"] / pairs,
            "train_logps/chosen": sums["logps/chosen"] / pairs,
            "train_logps/rejected": sums["logps/rejected"] / pairs,
            "train_entropy": sums["entropy"] / max(sums["chosen_tokens"], 1.0),
        }
        if sums.get("kl_tokens", 0.0) > 0:
            metrics["train_kl"] = sums["kl"] / sums["kl_tokens"]
        return metrics

    # --- validation and test ------------------------------------------------------------------------------------

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == 1:  # the fixed sample of training pairs: train_eval_loss, for the train/val gap
            terms, _, _ = self.pair_terms(batch.inputs, batch.targets)
            self.train_eval_loss.update(terms.losses.mean(), weight=len(terms.losses))
            return
        self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_step(self, batch: Batch, stage: str) -> None:
        terms, logps, (entropy, kl, tokens) = self.pair_terms(batch.inputs, batch.targets)
        half = batch.rows // 2
        values = {
            "loss": terms.losses,
            "rewards/chosen": terms.chosen_rewards,
            "rewards/rejected": terms.rejected_rewards,
            "rewards/margins": terms.chosen_rewards - terms.rejected_rewards,
            "rewards/accuracies": (terms.chosen_rewards > terms.rejected_rewards).float(),
            "logps/chosen": logps[:half],
            "logps/rejected": logps[half:],
        }
        metrics = self.eval_metrics[stage]
        for name, value in values.items():
            metrics[_key(name)].update(value)  # per-pair values: a mean over pairs
        n = tokens.clamp(min=1).float()
        metrics[_key("entropy")].update(entropy / n, weight=n)  # a mean over the chosen answers' tokens
        metrics[_key("kl")].update(kl / n, weight=n)

    def _log_eval(self, stage: str) -> None:
        for name in (*PAIR_METRICS, *TOKEN_METRICS):
            metric = self.eval_metrics[stage][_key(name)]
            if metric.update_called:
                self.log(f"{stage}_{name}", metric.compute(), prog_bar=name == "loss")
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")
        if self.train_eval_loss.update_called:
            self.log("train_eval_loss", self.train_eval_loss.compute())
            self.train_eval_loss.reset()

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    # --- checkpoints ------------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["dpo_reference"] = {"fingerprint": self._reference_fingerprint}
        if self._reference_logps is not None:
            checkpoint["dpo_reference"]["logps"] = self._reference_logps.cpu()
            checkpoint["dpo_reference"]["pairs"] = self._reference_pairs

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("dpo_reference", {})
        self._reference_fingerprint = state.get("fingerprint")
        self._reference_logps = state.get("logps")
        self._reference_pairs = state.get("pairs")  # None in older checkpoints: the table is computed again


def _key(name: str) -> str:
    """A metric's name as a module key (no dots or slashes)."""
    return name.replace("/", "_")


@torch.no_grad()
def weights_fingerprint(model: nn.Module) -> float:
    """A number that changes when the weights do: over the tensors, their sums and sums of squares, each tensor
    weighted by its place, in float64 (cheap, and all it needs to tell two checkpoints apart; not a hash)."""
    total = 0.0
    for i, tensor in enumerate(model.state_dict().values(), start=1):
        total += i * float(tensor.sum(dtype=torch.float64)) + float(tensor.square().sum(dtype=torch.float64)) / i
    return total
