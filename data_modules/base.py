"""The one base every dataset's DataModule stands on, directly: load a split through `datasets.load_dataset` (hub id
or a local folder in the hub's layout), encode it once into a token cache, serve batches in a resumable order, and
hold validation out of the train split where a dataset has no validation split. What datasets share beyond this is
composed, not inherited: the tokenizer (tokenizer_setting.py), windows over a token stream (token_stream.py), the
chat encoding (chat_encoding.py) and chat batches (chat_messages.py)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset

from data_modules.hf_loading import find_bad_data_file, load_hf_split
from data_modules.holdout import check_val_fraction, holdout_part, split_label
from data_modules.token_cache import (
    array_path,
    cache_key,
    default_cache_dir,
    meta_path,
    open_array,
    read_cache_meta,
    source_fingerprint,
    write_cache,
)
from data_modules.tokenizer_setting import TokenizerSetting
from data_modules.windows import ResumableShuffleSampler
from lightning_gpt.atomic import remove_leftovers, scratch_folder
from lightning_gpt.batch import collate
from lightning_gpt.errors import UserInputError
from lightning_gpt.sample import check_sample, resolve_sample
from lightning_gpt.tokenizer import AnyTokenizer

log = logging.getLogger(__name__)


class TokenDataModule(L.LightningDataModule):
    """Base of the dataset DataModules: caches, tokenizer, loaders, exact resume, and validation held out of the
    train split. Subclasses say how rows become arrays (`encode_rows`) and how arrays become training and evaluation
    batches, and pass the `TokenizerSetting` of their `--data.tokenizer`. One that can hold validation out of its
    train split sets `holds_out` and `val_fraction` before calling `__init__`.

    Args:
        path: Hugging Face dataset id, or a local folder in the hub's layout; `sample`: the built-in sample of the
            dataset (lightning_gpt/sample_data/), where the DataModule has one (its `sample` attribute).
        name: the dataset's config name, if it has several.
        block_size: longest training sequence; the CLI links it to `model.block_size`.
        batch_size: sequences per training batch on each device.
        eval_batch_size: sequences per validation/test batch (defaults to `batch_size`).
        num_workers: DataLoader worker processes.
        cache_dir: where token caches live (default ~/.cache/lightning_gpt/tokens, or $LIGHTNING_GPT_CACHE/tokens).
        seed: fixes the training order: which batch comes when depends only on the seed and the step.
        train_split: the split trained on.
        val_split: the split validated on.
        test_split: the split tested on.
        tokenizer_setting: what `--data.tokenizer` chose (data_modules/tokenizer_setting.py); default GPT-2's.
    """

    required_columns: tuple[str, ...] = ()
    sample: str | None = None  # the hub id of this DataModule's built-in sample (lightning_gpt/sample_data/<id>)
    holds_out = False  # validation is about `val_fraction` of the train split's rows, held out of training
    val_fraction: float | None = None  # None: this DataModule never holds validation out

    def __init__(
        self,
        path: str,
        name: str | None = None,
        block_size: int = 1024,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        cache_dir: str | None = None,
        seed: int = 1337,
        train_split: str = "train",
        val_split: str = "validation",
        test_split: str = "test",
        tokenizer_setting: TokenizerSetting | None = None,
    ) -> None:
        super().__init__()
        self.path, self.name = resolve_sample(path, self.sample), name
        self.block_size, self.batch_size = block_size, batch_size
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size  # checked in check_arguments
        self.num_workers, self.seed = num_workers, seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.encode_stats: dict = {}  # counts of the split being encoded, written into its cache's metadata
        self.encode_role: str | None = None  # the role being encoded, where a role reads only part of a split
        self.tokenizer_setting = tokenizer_setting or TokenizerSetting(None)
        self._tokenizer = None
        # Read by the CLI's link to model.vocab_size, before prepare_data runs.
        self.vocab_size = self.tokenizer_setting.planned_vocab_size(lambda: self.tokenizer)
        self._caches: dict[str, tuple[Path, dict]] = {}
        self._progress = {"epoch": 0, "batches": 0}  # training batches taken this epoch, on this rank
        self._resume: dict | None = None
        self._train_ready: tuple | None = None  # the training set and sampler that setup() checked

    # --- the tokenizer ---------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> AnyTokenizer:
        """Built on first use: a tokenizer trained on the data is trained (or read from its cache) only then."""
        if self._tokenizer is None:
            self._tokenizer = self.tokenizer_setting.build(self.tokenizer_file, self.training_documents)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self._tokenizer = value

    @property
    def tokenizer_spec(self) -> str:
        """The `--data.tokenizer` value (gpt2 where unset)."""
        return self.tokenizer_setting.spec

    def tokenizer_file(self) -> Path:
        """Where a tokenizer trained for this data and setting is cached: beside the token caches. The name follows
        the settings, so they are checked first."""
        self.check_arguments()
        spec = self.tokenizer_spec
        key = self._data_key(self.splits["train"], "train", spec)
        return self.cache_dir / f"{type(self).__name__.lower()}-tokenizer-{spec}-{key}.json"

    @contextmanager
    def training_documents(self) -> Iterator[Iterable[str]]:
        """The documents a tokenizer is trained on: those of the training part of the train split."""
        split = self.splits["train"]
        log.info("training the %s tokenizer on %s split %r", self.tokenizer_spec, self.path, split)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        remove_leftovers(self.cache_dir)
        with scratch_folder(self.cache_dir) as scratch:
            rows = self.load_rows(split, scratch)
            self.encode_stats, self.encode_role = {}, "train"  # the training part only: held-out documents excluded
            yield self.documents(rows)

    # --- what subclasses provide ---------------------------------------------------------------------------

    def documents(self, rows) -> Iterator[str]:
        """The documents of a loaded split, in order (what a trained tokenizer learns from)."""
        raise NotImplementedError

    def load_rows(self, split: str, scratch: str):
        """A split's rows, read into the folder `scratch` (removed afterwards)."""
        return load_hf_split(self.path, self.name, split, scratch)

    def array_dtypes(self) -> dict[str, np.dtype]:
        """The arrays a cache holds, with their dtypes."""
        raise NotImplementedError

    def encode_rows(self, rows, split: str) -> Iterator[dict[str, np.ndarray]]:
        """Chunks of the cache's arrays for a loaded split. May add counts to `self.encode_stats`."""
        raise NotImplementedError

    def train_dataset(self, base: Path, meta: dict) -> tuple[Dataset, ResumableShuffleSampler, int | None]:
        """(dataset, sampler, DataLoader batch size: None when the dataset yields whole batches)."""
        raise NotImplementedError

    def eval_dataset(self, base: Path, meta: dict) -> tuple[Dataset, int | None]:
        raise NotImplementedError

    def train_sample_dataset(self, base: Path, meta: dict, batches: int) -> tuple[Dataset, int | None]:
        """A fixed sample (drawn from the seed) of `batches` evaluation-sized batches of the training split."""
        raise NotImplementedError

    def check_arguments(self) -> None:
        """Refuses unusable settings, naming the flag. Called by prepare_data and setup, not __init__: the CLI builds
        the DataModule inside jsonargparse, which turns any error raised in __init__ into a long traceback."""
        check_sample(self.path, type(self).__name__)
        limits = {
            "block_size": (self.block_size, 1, "it follows --model.block_size"),
            "batch_size": (self.batch_size, 1, "sequences per training batch"),
            "eval_batch_size": (self.eval_batch_size, 1, "leave it unset to use --data.batch_size"),
            "num_workers": (self.num_workers, 0, "0 loads the data in the main process"),
        }
        for flag, (value, least, hint) in limits.items():
            if value < least:
                rule = "positive" if least else "0 or more"
                raise UserInputError(f"--data.{flag} must be {rule}, not {value} ({hint}).")
        self.check_splits()

    # --- validation held out of the train split --------------------------------------------------------------

    def check_splits(self) -> None:
        """Refuses a --data.val_fraction outside (0, 1) where validation is held out of the train split."""
        if self.val_fraction is not None:
            check_val_fraction(self.val_fraction, self.holds_out, self.splits["train"])

    def holdout_part(self, role: str | None) -> str | None:
        """Which part of the train split a role's cache holds: "val" (the held-out rows), "train" (the rest), or
        None (a whole split)."""
        return holdout_part(self.holds_out, role)

    def holdout_variant(self, role: str | None) -> tuple[str, ...]:
        """What sets a cache's rows apart, for `cache_variant`."""
        part = self.holdout_part(role)
        return (f"holdout={self.val_fraction}:{part}",) if part else ()

    # --- caches ----------------------------------------------------------------------------------------------

    def cache_base(self, split: str, role: str | None = None) -> Path:
        """Where a split's cache lives; the name changes with the data, the split, the tokenizer, the format and the
        settings of `cache_variant`. `role` (train, val, test) defaults to the first role that reads `split`."""
        role = role or self._first_role(split)
        key = self._data_key(split, role, self.tokenizer.fingerprint)
        return self.cache_dir / f"{type(self).__name__.lower()}-{split}-{key}"

    def _data_key(self, split: str, role: str | None, tokenizer: str) -> str:
        """What a cached file of a split is keyed by: the DataModule, the data, the split, the tokenizer, the format
        and the settings of `cache_variant`."""
        source = source_fingerprint(self.path)
        return cache_key(type(self).__name__, source, str(self.name), split, tokenizer, *self.cache_variant(role))

    def _first_role(self, split: str) -> str | None:
        return next((role for role, name in self.splits.items() if name == split), None)

    def cache_variant(self, role: str | None = None) -> tuple[str, ...]:
        """Settings besides data and tokenizer that change what is cached for a role (e.g. a length limit, the text
        column, or which part of a split the role reads)."""
        return ()

    def _roles(self, stage: str | None) -> list[str]:
        if stage in (None, TrainerFn.FITTING, "fit"):
            return ["train", "val"]
        if stage in (TrainerFn.VALIDATING, "validate"):
            return ["val"]
        if stage in (TrainerFn.TESTING, "test"):
            return ["test"]
        return []

    def prepare_data(self) -> None:
        """Encodes each split this run needs, once; later runs find the cache and skip this."""
        self.check_arguments()
        stage = self.trainer.state.fn if self.trainer is not None else None
        remove_leftovers(self.cache_dir)
        for role in self._roles(stage):
            split = self.splits[role]
            if read_cache_meta(self.cache_base(split, role), self.tokenizer.fingerprint) is None:
                self.build_cache(split, role=role)

    def build_cache(self, split: str, base: Path | None = None, role: str | None = None) -> dict:
        role = role or self._first_role(split)
        base = base or self.cache_base(split, role)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        remove_leftovers(self.cache_dir)
        # The pid in the name lets a later run remove this folder if this process is killed.
        with scratch_folder(self.cache_dir) as scratch:
            return self.encode_split(self.load_rows(split, scratch), split, base, role)

    def encode_split(self, rows, split: str, base: Path, role: str | None = None) -> dict:
        missing = [c for c in self.required_columns if c not in rows.column_names]
        if missing:
            raise UserInputError(
                f"--data.path {self.path} split {split!r} has columns {rows.column_names} but lacks {missing}; "
                f"{type(self).__name__} needs {list(self.required_columns)}."
            )
        if len(rows) == 0:
            raise UserInputError(f"--data.path {self.path} split {split!r} is empty; point it at data with rows.")
        label = split_label(split, self.holdout_part(role))
        log.info("encoding %s %s into %s.*", self.path, label, base)
        self.encode_stats = {}  # filled while rows are read; the metadata is written after the last one
        self.encode_role = role
        meta = {
            "source": source_fingerprint(self.path)[:500],
            "name": self.name,
            "split": split,
            "role": role,
            "variant": list(self.cache_variant(role)),
            "tokenizer": self.tokenizer.fingerprint,
            "stats": self.encode_stats,
        }
        try:
            meta = write_cache(base, self.encode_rows(rows, split), self.array_dtypes(), meta)
        except UnicodeDecodeError as err:  # datasets reads strings lazily: bad bytes surface only here
            raise UserInputError(self._not_utf8(split, err)) from None
        first = next(iter(meta["arrays"]))
        if meta["arrays"][first]["length"] == 0:
            for name in meta["arrays"]:  # an empty cache would only fail later, less clearly
                array_path(base, name).unlink(missing_ok=True)
            meta_path(base).unlink(missing_ok=True)
            raise UserInputError(f"--data.path {self.path} split {split!r} holds no usable text.")
        log.info("%s %s: %s", self.path, label, {n: a["length"] for n, a in meta["arrays"].items()})
        return meta

    def _not_utf8(self, split: str, err: UnicodeDecodeError) -> str:
        found = find_bad_data_file(self.path, self.name, split) if Path(self.path).expanduser().is_dir() else None
        columns = ", ".join(repr(c) for c in self.required_columns)
        where = found or f"split {split!r}: column {columns} holds text that is not valid UTF-8 ({err.reason})"
        return f"--data.path {self.path}: {where}; save the text as UTF-8."

    def _cache(self, role: str) -> tuple[Path, dict]:
        self.check_arguments()
        if role not in self._caches:
            split = self.splits[role]
            base = self.cache_base(split, role)
            meta = read_cache_meta(base, self.tokenizer.fingerprint)
            if meta is None:  # prepare_data did not run here (setup() called by hand, or another node built it)
                meta = self.build_cache(split, base, role)
            else:
                label = split_label(split, self.holdout_part(role))
                log.info("%s %s: reusing the token cache %s.*", self.path, label, base)
            self._caches[role] = (base, meta)
        return self._caches[role]

    def setup(self, stage: str) -> None:
        for role in self._roles(stage):
            self._cache(role)
        # In a fit, here: before the model summary and the sanity check, not at step 0. (A setup by hand, with no
        # Trainer, only reads the caches: train_dataloader checks then.)
        if "train" in self._roles(stage) and self.trainer is not None:
            self._train_ready = self.train_dataset(*self._cache("train"))  # train_dataloader takes it
            self.check_one_step(*self._train_ready[1:])

    def tokens(self, role: str = "train") -> np.ndarray:
        """The cached token ids of a role's split ("train", "val" or "test"), memory-mapped; built if missing."""
        return open_array(*self._cache(role), "tokens")

    # --- loaders ---------------------------------------------------------------------------------------------

    def _world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def _loader(self, dataset, sampler, batch_size: int | None, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            # Its own generator: a DataLoader otherwise draws its workers' base seed from the global torch RNG at each
            # new iterator, which moves the dropout stream and breaks an exact resume.
            generator=torch.Generator().manual_seed(self.seed),
            # Datasets of single sequences are stacked into a Batch; the others yield whole Batches.
            collate_fn=collate if batch_size is not None else None,
        )

    def sampler_args(self, items_per_batch: int) -> dict:
        """What a training sampler needs to know of the run: ranks, seed, and the items of one optimizer step."""
        world_size, rank = self._world()
        accumulate = getattr(self.trainer, "accumulate_grad_batches", 1)  # 1 without a Trainer (or a stand-in's)
        trainer = self.trainer
        return {
            "epoch_source": (lambda: trainer.current_epoch) if trainer is not None else None,
            "num_replicas": world_size,
            "rank": rank,
            "seed": self.seed,
            "items_per_step": items_per_batch * accumulate,
        }

    def train_dataloader(self) -> DataLoader:
        ready, self._train_ready = self._train_ready, None
        dataset, sampler, batch_size = ready or self.train_dataset(*self._cache("train"))
        self._items_per_batch = batch_size or 1
        if self._resume is not None:
            sampler.resume_from(self._resume["epoch"], self._resume["batches"] * self._items_per_batch)
        self.check_one_step(sampler, batch_size)
        return self._loader(dataset, sampler, batch_size, drop_last=batch_size is not None)

    def check_one_step(self, sampler: ResumableShuffleSampler, batch_size: int | None) -> None:
        """Refuses a training split that cannot fill one optimizer step on each device, with the numbers: what
        the split gives, what one step takes, and a setting that fits."""
        if len(sampler) > 0:
            return
        accumulate = sampler.items_per_step // (batch_size or 1)
        available = sampler.n_items // sampler.num_replicas  # items of one epoch for each device
        label = split_label(self.splits["train"], self.holdout_part("train"))
        if batch_size is None:  # the dataset yields whole batches (chats, pairs), of --data.batch_size rows each
            have = f"{available} batches of up to --data.batch_size {self.batch_size}"
            fits = max(self.batch_size * available // accumulate, 1) if available else None
        else:
            have = f"{available} training windows"
            fits = available // accumulate or None
        need = f"{accumulate} batch(es) (--trainer.accumulate_grad_batches {accumulate})"
        advice = f"--data.batch_size {fits} fits it" if fits and fits < self.batch_size else "add data"
        if available and available < accumulate:
            advice = f"--trainer.accumulate_grad_batches {available} fits it"
        raise UserInputError(
            f"--data.path {self.path} {label} gives {have} per device; one optimizer step takes {need}: {advice}."
        )

    def _eval_loader(self, role: str) -> DataLoader:
        from data_modules.windows import ShardSampler

        dataset, batch_size = self.eval_dataset(*self._cache(role))
        world_size, rank = self._world()
        return self._loader(dataset, ShardSampler(dataset, world_size, rank), batch_size)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation split; while fitting, also a fixed sample of training batches of the same size, scored
        like validation (the module logs it as train_eval_loss, for a train/val gap with dropout off on both)."""
        val = self._eval_loader("val")
        if self.trainer is None or self.trainer.state.fn != TrainerFn.FITTING:
            return val
        return [val, self._train_sample_loader(len(val))]

    def _train_sample_loader(self, val_batches: int) -> DataLoader:
        from data_modules.windows import ShardSampler

        world_size, rank = self._world()
        # As many batches as the validation loader has: Lightning's limit_val_batches then cuts both alike.
        dataset, batch_size = self.train_sample_dataset(*self._cache("train"), val_batches * world_size)
        return self._loader(dataset, ShardSampler(dataset, world_size, rank), batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    # --- exact resume ----------------------------------------------------------------------------------------

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # Counted here, as the training loop takes each batch, not in the sampler, which runs ahead by prefetching.
        if self.trainer is not None and self.trainer.training:
            epoch = self.trainer.current_epoch
            if self._progress["epoch"] != epoch:
                resumed = self._resume is not None and self._resume["epoch"] == epoch
                self._progress = {"epoch": epoch, "batches": self._resume["batches"] if resumed else 0}
            self._progress["batches"] += 1
        return batch

    def state_dict(self) -> dict:
        return {**self._progress, "seed": self.seed}

    def load_state_dict(self, state_dict: dict) -> None:
        # Lightning warns that a mid-epoch resume restarts a plain DataLoader; this module resumes it itself.
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended")
        if state_dict.get("seed", self.seed) != self.seed:
            log.warning(
                "resuming with --data.seed %s, the checkpoint used %s: the data order changes",
                self.seed,
                state_dict["seed"],
            )
        self._resume = {"epoch": state_dict["epoch"], "batches": state_dict["batches"]}
        self._progress = dict(self._resume)
