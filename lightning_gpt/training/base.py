"""What every training objective shares: the GPT it trains (from its settings, or from `init_from`), the optimizer
and schedule, the loss normalised over a whole optimizer step, training numbers summed on the device and read every
`log_every_n_steps`, a stop on a non-finite loss, and checkpoints that resume exactly. The objectives are
language_model.py (next-token prediction), dpo.py and reward_model.py."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

from lightning_gpt.batch import Batch
from lightning_gpt.checkpoint import check_resumed_tokenizer, load_pretrained, model_config, shape_mismatches
from lightning_gpt.errors import TrainingStopped, UserInputError
from lightning_gpt.model import GPT
from lightning_gpt.training.optim import (
    adamw_warmup_cosine,
    check_optimizer_settings,
    check_validation_between_steps,
    closed_form_schedule_state,
    muon_adamw_warmup_cosine,
)
from lightning_gpt.training.rng import collect_rng_states, restore_rng_states


class TrainingModule(L.LightningModule):
    """A GPT and how it learns; subclasses give the objective (`training_step` and what it logs).

    Args:
        preset: model shape: "tiny", "small", "gpt2-124m", ... (see lightning_gpt/model.py).
        vocab_size: number of token ids; the CLI links it from the data module's tokenizer.
        block_size: context length; the CLI links it to the data module's window length.
        n_layer: overrides the preset's number of layers.
        n_head: overrides the preset's number of attention heads.
        n_embd: overrides the preset's width.
        dropout: dropout on attention and residual branches.
        qk_norm: RMS-normalise each head's queries and keys (modded-nanogpt's QK-norm).
        mlp: the MLP, "swiglu" or "relu2" (ReLU squared, as many parameters).
        zero_init_proj: start each block's output projections at zero.
        logit_softcap: cap the logits to softcap * tanh(logits / softcap); null: no cap.
        embed_shortcut: mix the embedding back into each block's input with two learned scalars.
        optimizer: "adamw", or "muon": Muon on the blocks' weight matrices, AdamW (learning_rate, weight_decay,
            betas) on the embedding, the norms and any head.
        learning_rate: peak learning rate (AdamW's), reached after warmup.
        min_lr_ratio: the cosine schedule ends at learning_rate * min_lr_ratio.
        warmup_steps: optimizer steps of linear warmup.
        weight_decay: AdamW decay on matrices and embeddings (never on norms).
        betas: AdamW betas.
        muon_learning_rate: Muon's peak learning rate (the same schedule); its scale is not AdamW's: an update is an
            orthogonalised matrix of RMS about 1 / sqrt(width), times this.
        muon_momentum: Muon's Nesterov momentum.
        muon_weight_decay: Muon's decoupled weight decay (times its learning rate).
        compile: compile the model with torch.compile (worth it on a GPU for long runs).
        init_from: a checkpoint whose weights start this run (fine-tuning), with a fresh optimizer and schedule;
            ignored when resuming with --ckpt_path, loaded in validate and test too when no --ckpt_path is given.
            Token rows it lacks (e.g. chat tokens) start at the mean embedding.
    """

    init_role = "model"  # what init_from fills, as the log line names it

    def __init__(
        self,
        preset: str = "gpt2-124m",
        vocab_size: int = 50257,
        block_size: int = 1024,
        n_layer: int | None = None,
        n_head: int | None = None,
        n_embd: int | None = None,
        dropout: float = 0.0,
        qk_norm: bool = False,
        mlp: str = "swiglu",
        zero_init_proj: bool = False,
        logit_softcap: float | None = None,
        embed_shortcut: bool = False,
        optimizer: str = "adamw",
        learning_rate: float = 6e-4,
        min_lr_ratio: float = 0.1,
        warmup_steps: int = 700,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        muon_learning_rate: float = 0.02,
        muon_momentum: float = 0.95,
        muon_weight_decay: float = 0.0,
        compile: bool = False,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        check_optimizer_settings(
            learning_rate, min_lr_ratio, warmup_steps, weight_decay, betas, optimizer, muon_learning_rate,
            muon_momentum, muon_weight_decay,
        )  # fmt: skip
        self.save_hyperparameters()
        self.config = model_config(self.hparams)
        self.model = GPT(self.config)
        self.tokens_seen = 0  # training tokens over all devices, kept across resumes
        self.flops_per_batch = 0  # read by the throughput monitor for MFU; set by each step
        # Device-side running sums of the current optimizer step, by name, read on the host only every
        # log_every_n_steps (no sync per step), and the first non-finite loss (step, value).
        self._step_sums: dict[str, torch.Tensor] = {}
        self._first_nonfinite: torch.Tensor | None = None
        self._rng_to_restore: dict | None = None
        self._init_from_done = False

    # --- the model's starting weights -----------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        self._start_from_init_from()

    def on_test_start(self) -> None:
        self._start_from_init_from()

    def _start_from_init_from(self) -> None:
        """Loads init_from whenever no --ckpt_path supplies the weights: in fit, validate and test alike, before the
        first forward pass (evaluating the starting model on a new stage's data is a first step), and only once, so
        that a validate after a fit in one process keeps the trained weights. Called from the start hooks, not
        setup(): only then does the trainer know whether it restored a checkpoint. Loading copies into the
        existing parameters, so an optimizer built before still holds the right tensors."""
        if self._init_from_done:
            return
        self._init_from_done = True
        if self.hparams.init_from and self.trainer.ckpt_path is None:
            tokenizer = getattr(self.trainer.datamodule, "tokenizer", None)  # refused unless it is init_from's
            load_pretrained(self.model, self.hparams.init_from, tokenizer=tokenizer, role=self.init_role)

    def configure_model(self) -> None:
        if self.hparams.compile and self.model._compiled_call_impl is None:
            self.model.compile()  # compiles the training loss (GPT.forward) in place: state-dict keys stay the same

    # --- the loss of an optimizer step ------------------------------------------------------------------------

    def step_loss(self, summed: torch.Tensor, count: torch.Tensor | float, batch: Batch) -> torch.Tensor:
        """The loss to return from training_step for a micro-batch whose losses add up to `summed` over `count`
        items (scored targets or pairs): the mean over the whole optimizer step when the batch says how many items
        that step holds (every accumulated micro-batch, every rank), else the micro-batch's own mean. Lightning
        divides the returned loss by accumulate_grad_batches and DDP averages gradients over ranks: both are undone,
        so the step's gradient is that of (the step's summed losses) / (its items), whatever the micro-batches'
        own counts (SFT batches differ in how many assistant tokens they hold)."""
        if batch.step_count is None:  # a batch made by hand (benchmarks)
            return summed / torch.as_tensor(count, device=summed.device).clamp(min=1)
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size
        return summed * scale / batch.step_count.flatten()[0].clamp(min=1)

    def count_batch(self, batch: Batch, flops_per_token: float) -> None:
        """Counts a training batch's real tokens (padding is no work done) into tokens_seen and its FLOPs."""
        self.flops_per_batch = int(flops_per_token * batch.tokens)
        self.tokens_seen += batch.tokens * self.trainer.world_size

    # --- training numbers, summed on the device ---------------------------------------------------------------

    def track(self, sums: dict[str, torch.Tensor], loss: torch.Tensor) -> None:
        """Adds a micro-batch's sums (scalar tensors, by name: what `step_metrics` turns into the logged numbers) to
        the step's, and remembers the first non-finite `loss` (the micro-batch's mean), all on the device."""
        for name, value in sums.items():
            total = self._step_sums.get(name)
            if total is None or total.device != value.device:
                total = self._step_sums[name] = torch.zeros((), dtype=torch.float64, device=value.device)
            total += value.detach().double()
        if self._first_nonfinite is None or self._first_nonfinite.device != loss.device:
            self._first_nonfinite = torch.full((2,), -1.0, dtype=torch.float64, device=loss.device)
        first = (~torch.isfinite(loss)) & (self._first_nonfinite[0] < 0)
        # torch.full passes the step as a kernel argument; torch.tensor(step, device=cuda) would copy from the host
        # and wait for the stream: a sync per micro-batch.
        step = torch.full((), float(self.trainer.global_step), dtype=torch.float64, device=loss.device)
        here = torch.stack([step, loss.detach().double()])
        self._first_nonfinite = torch.where(first, here, self._first_nonfinite)

    def step_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """The logged numbers of an optimizer step from its sums over every micro-batch and rank (see `track`);
        `train_loss` among them."""
        raise NotImplementedError

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here every micro-batch of the step has been seen, and callbacks (checkpoints) have not run yet; Lightning
        # counts the step in global_step only after this hook.
        step = self.trainer.global_step + 1
        if step % (self.trainer.log_every_n_steps or 1) == 0 or step >= self.trainer.max_steps > 0:
            self._report_step()
        for total in self._step_sums.values():
            total.zero_()

    def _report_step(self) -> None:
        """Logs the numbers of the optimizer step just taken (all ranks) and stops on a non-finite loss: the one host
        sync of the training loop, every log_every_n_steps."""
        names = list(self._step_sums)
        flag = (self._first_nonfinite[:1] >= 0).double()
        values = torch.cat([torch.stack([self._step_sums[n] for n in names]), flag])
        values = self.trainer.strategy.reduce(values, reduce_op="sum").tolist()
        if values[-1] > 0:
            raise TrainingStopped(self._nonfinite_message())
        # Written to the loggers now, not at the end of the batch as self.log would: a SIGTERM stop at this step
        # raises before that, and the step's loss would be missing from the curve. Numbered as Lightning does.
        metrics = {**self.step_metrics(dict(zip(names, values, strict=False))), "tokens_seen": float(self.tokens_seen)}
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.trainer.global_step)
        self.log("train_loss", metrics["train_loss"], prog_bar=True, logger=False)

    def on_validation_start(self) -> None:
        self._start_from_init_from()  # a `validate` run; in fit, on_fit_start came first
        # A validation (and its samples and checkpoints) after a non-finite loss would only spread it: stop first.
        if self.trainer.training or self.trainer.state.fn == "fit":
            flag = self._first_nonfinite is not None and bool(self._first_nonfinite[0] >= 0)
            if self.trainer.strategy.reduce_boolean_decision(flag, all=False):
                raise TrainingStopped(self._nonfinite_message())

    def _nonfinite_message(self) -> str:
        step, loss = self._first_nonfinite.tolist() if self._first_nonfinite is not None else (-1.0, float("nan"))
        what = (
            f"the training loss became non-finite ({loss}) at step {int(step)}"
            if step >= 0
            else (f"the weights became non-finite by step {self.trainer.global_step}")
        )
        # A ModelCheckpoint names its file before saving it: only files that exist were saved.
        callbacks = self.trainer.checkpoint_callbacks
        kept = [getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "") for cb in callbacks]
        kept = [Path(k).resolve() for k in kept if k and Path(k).is_file()]
        return (
            f"{what}; stopped without saving those weights"
            + (f"; the last good checkpoint is {kept[0]}" if kept else "")
            + ". Lower --model.learning_rate, keep --trainer.gradient_clip_val, or use bf16-mixed instead of "
            "16-mixed, then resume from the good checkpoint with --ckpt_path."
        )

    def on_validation_end(self) -> None:
        # Lightning runs this after every callback's on_validation_end (ModelCheckpoints included): the point where a
        # stop requested during the step before the validation can save (callbacks/sigterm.py).
        for callback in self.trainer.callbacks:
            if hasattr(callback, "after_validation"):
                callback.after_validation(self.trainer)

    # --- optimizer and schedule -------------------------------------------------------------------------------

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        precision = self.trainer.precision_plugin
        if isinstance(precision, MixedPrecision) and precision.scaler is None:
            # bf16-mixed scales nothing, yet Lightning's MixedPrecision refuses to clip for any fused optimizer as if
            # a GradScaler had scaled its gradients: clip as its base class does.
            Precision.clip_gradients(precision, optimizer, gradient_clip_val or 0.0, gradient_clip_algorithm or "norm")
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        total = self.trainer.estimated_stepping_batches
        if total == float("inf"):
            raise UserInputError("set --trainer.max_steps or --trainer.max_epochs: the cosine schedule needs an end.")
        optimizer, schedule = self.build_optimizer(int(total))
        # The name is LearningRateMonitor's tag for it (else "lr-AdamW").
        schedule_config = {"scheduler": schedule, "interval": "step", "name": "learning_rate"}
        return {"optimizer": optimizer, "lr_scheduler": schedule_config}

    def build_optimizer(self, total_steps: int):
        """The optimizer (AdamW, or Muon with AdamW) and its warmup-cosine schedule from this module's
        hyperparameters (AdamW fused on CUDA and on the CPU)."""
        hp = self.hparams
        adamw = {"lr": hp.learning_rate, "weight_decay": hp.weight_decay, "betas": hp.betas}
        schedule = {"warmup_steps": hp.warmup_steps, "total_steps": total_steps, "min_lr_ratio": hp.min_lr_ratio}
        # torch's fused AdamW: one kernel for all the parameters; on the CPU 0.2x the foreach step's time for the
        # 50k x 256 embedding of docs/benchmarks.md's CPU shape (0.014 s against 0.074 s). Not under a GradScaler
        # (16-mixed): Lightning cannot clip the gradients of an optimizer that unscales them itself.
        fused = self.device.type in ("cuda", "cpu") and _grad_scaler(self._trainer) is None
        if hp.optimizer == "adamw":
            return adamw_warmup_cosine(self.parameters(), **adamw, **schedule, fused=fused)
        self._check_muon_strategy()
        # The hidden matrices: every 2-D weight inside the blocks. The embedding (tied to the output head), the
        # norms, the blocks' scalars and a reward model's score head stay with AdamW.
        matrices = [p for p in self.model.blocks.parameters() if p.dim() == 2]
        chosen = {id(p) for p in matrices}
        others = [p for p in self.parameters() if id(p) not in chosen]
        muon = {"muon_lr": hp.muon_learning_rate, "muon_momentum": hp.muon_momentum}
        return muon_adamw_warmup_cosine(
            matrices, others, **muon, muon_weight_decay=hp.muon_weight_decay, **adamw, **schedule, fused=fused
        )

    def _check_muon_strategy(self) -> None:
        strategy = getattr(self._trainer, "strategy", None)
        if type(strategy).__name__.startswith(("FSDP", "ModelParallel")):
            raise UserInputError(
                "--model.optimizer muon needs each weight matrix whole on every device, and this strategy shards "
                "them (FSDP, configs/fsdp.yaml); use DDP (configs/multi_gpu.yaml) or --model.optimizer adamw."
            )

    def on_train_start(self) -> None:
        check_validation_between_steps(self.trainer)
        if self._rng_to_restore is not None:  # a resume: continue the random stream where the checkpoint left it
            restore_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
        # The optimizer's restored learning rate is the old plan's; set the one this run's plan gives for the step.
        for config in self.trainer.lr_scheduler_configs:
            schedule = config.scheduler
            for group, base, factor in zip(
                schedule.optimizer.param_groups, schedule.base_lrs, schedule.lr_lambdas, strict=True
            ):
                group["lr"] = base * factor(schedule.last_epoch)

    # --- checkpoints ------------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        weights_finite = bool(torch.isfinite(torch.nn.utils.get_total_norm(list(self.parameters()))))
        loss_finite = self._first_nonfinite is None or bool(self._first_nonfinite[0] < 0)
        if not (weights_finite and loss_finite):  # never write (or replace last.ckpt with) non-finite weights
            raise TrainingStopped(self._nonfinite_message())
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["rng_states"] = collect_rng_states()
        datamodule = getattr(self.trainer, "datamodule", None)
        if hasattr(datamodule, "splits"):  # what this stage trained on, for the evaluation card's stage chain
            checkpoint["data"] = {"class": type(datamodule).__name__, "path": str(datamodule.path),
                                  "name": datamodule.name, "train_split": datamodule.splits["train"]}  # fmt: skip
        tokenizer = getattr(datamodule, "tokenizer", None)
        if hasattr(tokenizer, "to_data"):  # plain data: generate, chat and serve rebuild it from the checkpoint alone
            checkpoint["tokenizer"] = tokenizer.to_data()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        problems = shape_mismatches(self.state_dict(), checkpoint.get("state_dict", {}))
        if problems:
            raise UserInputError(
                "the checkpoint holds a model of another shape than this run's: "
                + "; ".join(problems)
                + ". Use the model settings it was trained with (its hyperparameters are in the checkpoint), "
                "or start from scratch without --ckpt_path."
            )
        check_resumed_tokenizer(checkpoint, getattr(getattr(self._trainer, "datamodule", None), "tokenizer", None))
        self.tokens_seen = checkpoint.get("tokens_seen", 0)
        self._rng_to_restore = checkpoint.get("rng_states")
        schedules = checkpoint.get("lr_schedulers", [])
        checkpoint["lr_schedulers"] = [
            closed_form_schedule_state(state, self.hparams.learning_rate) for state in schedules
        ]


def _grad_scaler(trainer: L.Trainer | None):
    """The trainer's GradScaler (16-mixed), or None (bf16, fp32, or no trainer)."""
    return getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
