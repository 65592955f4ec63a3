"""The training CLI: LightningCLI with lightning-gpt's defaults (safe checkpoints, SIGTERM handling, run folders)."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.progress import use_step_progress_bar
from callbacks.sigterm import SIGTERM_EXIT_CODE, CheckpointOnSigterm
from data_modules.base import TokenDataModule
from lightning_gpt.checkpoint import check_init_tokenizer
from lightning_gpt.checkpoint_io import check_ckpt_path, load_checkpoint_file
from lightning_gpt.errors import TrainingStopped, UserInputError
from lightning_gpt.training import TrainingModule
from lightning_gpt.training.checkpoint_plugin import use_safe_checkpoint_io

log = logging.getLogger(__name__)

# Where the training modules lived before lightning_gpt/training/: older checkpoints name them so.
MOVED_CLASSES = {
    "lightning_gpt.lit_module.GPTModule": "lightning_gpt.training.GPTModule",
    "lightning_gpt.dpo.DPOModule": "lightning_gpt.training.DPOModule",
    "lightning_gpt.reward_model.RewardModule": "lightning_gpt.training.RewardModule",
}

DESCRIPTION = (
    "Train a GPT and turn it into a chat model. Training: fit, validate, test (below); the config's model.class_path "
    "picks the stage's module (language model, DPO, reward model). Using a checkpoint: lightning-gpt "
    "generate|chat|evaluate-chat|make-pairs|serve|web|export --help."
)


class GPTCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # No `predict`: generation has its own commands (generate, chat), which need no Trainer.
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name != "predict"}

    def parse_arguments(self, parser, args) -> None:
        self.argv = list(sys.argv[1:] if args is None else args)  # for the resume command at the end of fit
        super().parse_arguments(parser, args)
        # Here, not later: LightningCLI reads a --ckpt_path file for its hyperparameters right after parsing.
        if self.config.get("subcommand"):
            check_ckpt_path(self.config[self.config.subcommand].get("ckpt_path"))

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's: the checkpoint's hyperparameters update the config (they win over the command line). Read
        with our loader, whose failures are one message naming the file, and with the module paths of checkpoints
        written before lightning_gpt/training/ existed mapped to today's."""
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path") if self.config.get("subcommand") else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        hparams = load_checkpoint_file(ckpt_path, mmap=True).get("hyper_parameters", {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            class_path = hparams.pop("_class_path")
            hparams = {"class_path": MOVED_CLASSES.get(class_path, class_path), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:
            # jsonargparse builds the model (a subclass-mode argument) inside a type check, and a refusal of its
            # settings comes back wrapped in its own ValueError: pass ours on as it was raised.
            cause = err
            while cause is not None and not isinstance(cause, UserInputError):
                cause = cause.__cause__ or cause.__context__
            raise (cause or err) from None

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        use_safe_checkpoint_io(trainer)  # also when --trainer.plugins replaced the default plugin list
        use_step_progress_bar(trainer)
        return trainer

    def add_arguments_to_parser(self, parser) -> None:
        # A config without model.class_path trains the plain language model (pretraining, SFT); the DPO and reward
        # configs name their subclass of it.
        parser.set_defaults({"model": {"class_path": "lightning_gpt.training.GPTModule"}})
        # The model's context length sets the data windows; the data's tokenizer sets the vocabulary.
        parser.link_arguments("model.init_args.block_size", "data.init_args.block_size")
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        if config.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise UserInputError(
                "--trainer.accelerator is 'gpu' but no CUDA GPU is available here; add -c configs/smoke.yaml for a "
                "small CPU run, or pass --trainer.accelerator cpu."
            )
        if self.subcommand in ("validate", "test"):
            separate_evaluation_run(config.trainer.logger, self.subcommand)
        tokenizer_from_init_from(config)

    def before_validate(self) -> None:
        check_init_from_tokenizer(self.model, self.datamodule, self.config[self.subcommand].get("ckpt_path"))

    def before_test(self) -> None:
        check_init_from_tokenizer(self.model, self.datamodule, self.config[self.subcommand].get("ckpt_path"))

    def before_fit(self) -> None:
        check_init_from_tokenizer(self.model, self.datamodule, self.config[self.subcommand].get("ckpt_path"))
        # Runs keep their checkpoints at a fixed place (so that --ckpt_path last finds them); a fresh run there
        # would overwrite last.ckpt and best-*.ckpt of the earlier one.
        if self.config[self.subcommand].get("ckpt_path") is not None:
            return
        folders = {Path(cb.dirpath) for cb in self.trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)}
        if self.trainer.log_dir:
            folders.add(Path(self.trainer.log_dir) / "checkpoints")
        for folder in sorted(folders):
            if any(folder.glob("*.ckpt")):
                raise UserInputError(
                    f"{folder} already holds checkpoints of an earlier run. Resume it with --ckpt_path last, start a "
                    "separate run with --trainer.logger.init_args.version NAME, or move that folder away."
                )

    def after_fit(self) -> None:
        """Says where the checkpoints are and the command that resumes the run."""
        folders = sorted({Path(cb.dirpath) for cb in self.trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)})
        for folder in folders:
            names = sorted(p.name for p in folder.glob("*.ckpt"))
            if names:
                log.info("checkpoints: %s (%s)", folder, ", ".join(names))
        if any(folder.glob("last.ckpt") for folder in folders):
            log.info("resume (after a stop, or with a larger --trainer.max_steps): %s", resume_command(self.argv))


def resume_command(argv: list[str]) -> str:
    """The fit command line `argv` with --ckpt_path last in place of any --ckpt_path it had."""
    kept, skip = [], False
    for word in argv:
        if skip or word.startswith("--ckpt_path="):
            skip = False
            continue
        if word == "--ckpt_path":
            skip = True
            continue
        kept.append(word)
    return shlex.join(["lightning-gpt", *kept, "--ckpt_path", "last"])


def check_init_from_tokenizer(model, datamodule, ckpt_path) -> None:
    """Refuses a --model.init_from whose tokenizer the data's does not extend before any data is encoded (loading
    the weights checks it again, for runs without the CLI)."""
    init_from = getattr(model.hparams, "init_from", None)
    tokenizer = getattr(datamodule, "tokenizer", None)
    if init_from and ckpt_path is None and tokenizer is not None:
        checkpoint = load_checkpoint_file(init_from, flag="--model.init_from", mmap=True)
        check_init_tokenizer(checkpoint, init_from, tokenizer)


def tokenizer_from_init_from(config) -> None:
    """--data.tokenizer left unset: the tokenizer of --model.init_from, so that fine-tuning reads its data with the
    ids the model was trained on (the chat DataModules add the chat tokens to it); without init_from (or where its
    file is gone on a resume), that of a --ckpt_path file, so that `validate --ckpt_path FILE` needs no flag for it.
    `--ckpt_path last` counts as its file: the run's last.ckpt (TrainingModule.on_load_checkpoint checks it again)."""
    data = getattr(config.data, "init_args", None)
    if data is None or "tokenizer" not in data or data.tokenizer is not None:
        return
    init_from = getattr(getattr(config.model, "init_args", None), "init_from", None)
    ckpt_path = config.get("ckpt_path")
    ckpt_file = last_checkpoint_file(config.trainer) if ckpt_path == "last" else ckpt_path
    if init_from and (ckpt_path is None or Path(init_from).is_file()):
        data.tokenizer = init_from
    elif ckpt_file is not None and Path(ckpt_file).is_file():
        data.tokenizer = str(ckpt_file)


def last_checkpoint_file(trainer_config) -> Path | None:
    """The file `--ckpt_path last` resumes, known before the Trainer exists (the DataModule, built first, needs its
    tokenizer): last.ckpt in a checkpoint callback's `dirpath`, else in the TensorBoard run folder's checkpoints/,
    where ModelCheckpoint writes by default; the newest where several are, as Lightning picks. None when none is."""
    folders = [
        Path(callback.init_args.dirpath)
        for callback in trainer_config.get("callbacks") or []
        if getattr(getattr(callback, "init_args", None), "dirpath", None)
    ]
    logger = getattr(trainer_config.get("logger"), "init_args", None)
    if logger is not None and getattr(logger, "version", None) is not None and getattr(logger, "save_dir", None):
        folders.append(
            Path(logger.save_dir) / (getattr(logger, "name", None) or "") / str(logger.version) / "checkpoints"
        )
    found = [folder / "last.ckpt" for folder in folders if (folder / "last.ckpt").is_file()]
    return max(found, key=lambda path: path.stat().st_mtime, default=None)


def separate_evaluation_run(logger_config, subcommand: str) -> None:
    """Gives `validate` and `test` a TensorBoard folder of their own (`<version>-validate`, then `-2`, ...): written
    into the fit's folder, their step-0 events make TensorBoard drop the fit's curves as orphaned."""
    init_args = getattr(logger_config, "init_args", None)
    if init_args is None or not hasattr(init_args, "version") or not hasattr(init_args, "save_dir"):
        return
    base = f"{init_args.version or 'version'}-{subcommand}"
    folder = Path(init_args.save_dir) / (getattr(init_args, "name", None) or "")
    version, n = base, 1
    while (folder / version).exists():
        n += 1
        version = f"{base}-{n}"
    init_args.version = version


class KeepEarlierConfigs(SaveConfigCallback):
    """Writes the run's resolved config as config.yaml, or as config-2.yaml, ... when the folder already has one: a
    resumed fit (perhaps with other settings) must not overwrite the config the run started with."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not self.already_saved:
            log_dir = trainer.log_dir  # a broadcast: every rank must ask
            if trainer.is_global_zero and log_dir:  # only rank 0 writes; the others never use the name
                stem, n = Path(self.config_filename).stem, 1
                while (Path(log_dir) / self.config_filename).exists():
                    n += 1
                    self.config_filename = f"{stem}-{n}.yaml"
        super().setup(trainer, pl_module, stage)


def build_cli(args: list[str] | None = None, run: bool = True) -> GPTCLI:
    """The CLI over the training modules (`model.class_path`: the language model by default, DPO, the reward
    model) and any DataModule; with run=False it only parses and builds the objects (tests)."""
    return GPTCLI(
        TrainingModule,
        TokenDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=KeepEarlierConfigs,
        trainer_defaults={"callbacks": [CheckpointOnSigterm()]},
        parser_kwargs={"description": DESCRIPTION},
        args=args,
        run=run,
    )


def run(args: list[str] | None = None) -> GPTCLI:
    """Runs the CLI and returns it (tests read its trainer and model). User errors exit with code 2, a SIGTERM with
    143 after saving, a non-finite loss with 1: each with one line on stderr, no traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if torch.cuda.is_available():  # TF32 for the matmuls that stay in float32 (bf16-mixed runs most in bf16)
        torch.set_float32_matmul_precision("high")
    try:
        return build_cli(args)
    except UserInputError as err:
        print(f"lightning-gpt: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingStopped as err:
        print(f"lightning-gpt: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except SIGTERMException:  # before training started (data preparation, sanity check): nothing to save yet
        print("lightning-gpt: received SIGTERM before the first training step; nothing was saved.", file=sys.stderr)
        raise SystemExit(SIGTERM_EXIT_CODE) from None
