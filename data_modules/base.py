"""The small base every dataset's DataModule stands on: load a split through `datasets.load_dataset` (hub id or a
local folder in the hub's layout), tokenize it once into a token cache, serve fixed-length windows."""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader

from data_modules.token_cache import (
    batched,
    cache_key,
    default_cache_dir,
    read_cache_meta,
    source_fingerprint,
    token_dtype,
    write_token_cache,
)
from data_modules.windows import EvalWindows, ResumableWindowSampler, ShardSampler, TrainWindows, _MemmapTokens
from lightning_gpt.errors import UserInputError
from lightning_gpt.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def load_hf_split(path: str, name: str | None, split: str, scratch_dir: str | None = None):
    """One `datasets.load_dataset` call for a hub id or a local folder, with errors that say what to do.

    A local folder is converted in `scratch_dir`: datasets' shared cache keys local folders loosely and can
    serve a stale copy (even stale column types) of a folder whose files were replaced.
    """
    import datasets  # heavy; only the processes that read raw data need it

    local = Path(path).expanduser()
    looks_local = path.startswith((".", "/", "~")) or local.exists()
    if looks_local and not local.is_dir():
        raise UserInputError(
            f"--data.path {path}: no such folder. Pass a folder in the Hugging Face hub's layout "
            "(e.g. ../shared/data/hub/Salesforce/wikitext) or a hub dataset id."
        )
    try:
        if looks_local:
            return datasets.load_dataset(str(local), name, split=split, cache_dir=scratch_dir)
        return datasets.load_dataset(path, name, split=split)
    except ConnectionError as err:
        raise UserInputError(
            f"could not reach the Hugging Face hub for dataset {path!r} ({err}). Offline, pass a local copy in the "
            "hub's layout with --data.path DIR (for example ../shared/data/hub/Salesforce/wikitext)."
        ) from None
    except datasets.exceptions.DatasetGenerationError as err:
        cause = err.__cause__ or err
        raise UserInputError(
            f"could not read split {split!r} of --data.path {path} ({type(cause).__name__}: {cause}); "
            "check that its data files are valid and not empty."
        ) from None
    except ValueError as err:  # unknown split or config name: datasets lists the ones that exist
        raise UserInputError(f"--data.path {path} (config {name!r}, split {split!r}): {err}") from None
    except FileNotFoundError as err:
        raise UserInputError(f"--data.path {path}: {err}") from None


class TokenDataModule(L.LightningDataModule):
    """Windows of `block_size` tokens over tokenized splits. Subclasses say how rows become documents.

    Args:
        path: Hugging Face dataset id, or a local folder in the hub's layout.
        name: the dataset's config name, if it has several.
        block_size: tokens per training window; the CLI links it to `model.block_size`.
        batch_size: windows per training batch on each device.
        eval_batch_size: windows per validation/test batch (defaults to `batch_size`).
        num_workers: DataLoader worker processes.
        cache_dir: where token caches live (default ~/.cache/lightning_gpt/tokens, or $LIGHTNING_GPT_CACHE/tokens).
        seed: fixes the training order: window order depends only on the seed and the step.
        train_split: the split trained on.
        val_split: the split validated on.
        test_split: the split tested on.
    """

    required_columns: tuple[str, ...] = ()

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
    ) -> None:
        super().__init__()
        if block_size <= 0 or batch_size <= 0:
            raise UserInputError(
                f"--data.block_size and --data.batch_size must be positive ({block_size}, {batch_size})."
            )
        self.path, self.name = path, name
        self.block_size, self.batch_size = block_size, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.tokenizer = self.build_tokenizer()
        self.vocab_size = self.tokenizer.vocab_size  # read by the CLI's link to model.vocab_size
        self._sources: dict[str, _MemmapTokens] = {}
        self._train_sampler: ResumableWindowSampler | None = None
        self._progress = {"epoch": 0, "samples": 0}  # training windows consumed this epoch, on this rank
        self._resume: dict | None = None

    # --- what subclasses provide ---------------------------------------------------------------------------

    def build_tokenizer(self) -> Tokenizer:
        return Tokenizer()

    def documents(self, rows) -> Iterator[str]:
        """The documents of a loaded split, as text; each becomes its ids followed by end-of-text."""
        raise NotImplementedError

    # --- caches ----------------------------------------------------------------------------------------------

    def cache_path(self, split: str) -> Path:
        key = cache_key(
            type(self).__name__, source_fingerprint(self.path), str(self.name), split, self.tokenizer.fingerprint
        )
        return self.cache_dir / f"{type(self).__name__.lower()}-{split}-{key}.bin"

    def _stages_splits(self, stage: str | None) -> list[str]:
        if stage in (None, TrainerFn.FITTING, "fit"):
            return ["train", "val"]
        if stage in (TrainerFn.VALIDATING, "validate"):
            return ["val"]
        if stage in (TrainerFn.TESTING, "test"):
            return ["test"]
        return []

    def prepare_data(self) -> None:
        """Tokenizes each split this run needs, once; later runs find the cache and skip this."""
        stage = self.trainer.state.fn if self.trainer is not None else None
        for role in self._stages_splits(stage):
            split = self.splits[role]
            bin_path = self.cache_path(split)
            if read_cache_meta(bin_path, self.tokenizer.fingerprint) is None:
                self.build_cache(split, bin_path)

    def build_cache(self, split: str, bin_path: Path) -> int:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix=".raw-") as scratch:
            return self._tokenize_split(load_hf_split(self.path, self.name, split, scratch), split, bin_path)

    def _tokenize_split(self, rows, split: str, bin_path: Path) -> int:
        missing = [c for c in self.required_columns if c not in rows.column_names]
        if missing:
            raise UserInputError(
                f"--data.path {self.path} split {split!r} has columns {rows.column_names} but lacks {missing}; "
                f"{type(self).__name__} needs {list(self.required_columns)}."
            )
        if len(rows) == 0:
            raise UserInputError(
                f"--data.path {self.path} split {split!r} is empty; point --data.path at data with rows."
            )
        log.info("tokenizing %s split %r into %s", self.path, split, bin_path)
        eot, dtype = self.tokenizer.eot_id, token_dtype(self.vocab_size)

        def chunks() -> Iterator[np.ndarray]:
            for docs in batched(self.documents(rows), 256):
                flat: list[int] = []
                for ids in self.tokenizer.encode_batch(docs):  # BPE on several threads
                    flat.extend(ids)
                    flat.append(eot)
                yield np.array(flat, dtype=dtype)

        meta = {
            "source": source_fingerprint(self.path)[:500],
            "name": self.name,
            "split": split,
            "tokenizer": self.tokenizer.fingerprint,
        }
        n_tokens = write_token_cache(bin_path, chunks(), dtype, meta)
        if n_tokens == 0:
            bin_path.unlink(missing_ok=True)
            bin_path.with_suffix(".json").unlink(missing_ok=True)
            raise UserInputError(f"--data.path {self.path} split {split!r} holds no text; point it at data with text.")
        log.info("%s split %r: %d tokens", self.path, split, n_tokens)
        return n_tokens

    def _open(self, role: str) -> _MemmapTokens:
        split = self.splits[role]
        bin_path = self.cache_path(split)
        meta = read_cache_meta(bin_path, self.tokenizer.fingerprint)
        if meta is None:  # prepare_data did not run here (e.g. setup() called by hand, or another node built it)
            self.build_cache(split, bin_path)
            meta = read_cache_meta(bin_path, self.tokenizer.fingerprint)
        source = _MemmapTokens(bin_path, meta)
        if len(source) <= self.block_size + 1 and role == "train":
            raise UserInputError(
                f"split {split!r} has {len(source)} tokens, too few for two windows of --data.block_size "
                f"{self.block_size}; use more data or a smaller block size."
            )
        return source

    def setup(self, stage: str) -> None:
        for role in self._stages_splits(stage):
            if role not in self._sources:
                self._sources[role] = self._open(role)

    # --- loaders ---------------------------------------------------------------------------------------------

    def _world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def _loader(self, dataset, sampler, batch_size: int, drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = TrainWindows(self._sources["train"], self.block_size)
        world_size, rank = self._world()
        sampler = ResumableWindowSampler(dataset, num_replicas=world_size, rank=rank, seed=self.seed)
        if self._resume is not None:
            sampler.resume_from(self._resume["epoch"], self._resume["samples"])
        if len(sampler) < self.batch_size:
            raise UserInputError(
                f"split {self.splits['train']!r} gives {len(sampler)} windows per device, fewer than one batch of "
                f"--data.batch_size {self.batch_size}; lower the batch size or block size."
            )
        self._train_sampler = sampler
        return self._loader(dataset, sampler, self.batch_size, drop_last=True)

    def _eval_loader(self, role: str) -> DataLoader:
        dataset = EvalWindows(self._sources[role], self.block_size, pad_id=self.tokenizer.eot_id)
        world_size, rank = self._world()
        return self._loader(dataset, ShardSampler(dataset, world_size, rank), self.eval_batch_size, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    # --- exact resume ----------------------------------------------------------------------------------------

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # Counted here, as the training loop takes each batch, not in the sampler, which runs ahead by prefetching.
        if self.trainer is not None and self.trainer.training:
            epoch = self.trainer.current_epoch
            if self._progress["epoch"] != epoch:
                resumed = self._resume is not None and self._resume["epoch"] == epoch
                self._progress = {"epoch": epoch, "samples": self._resume["samples"] if resumed else 0}
            self._progress["samples"] += len(batch[0])
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self._progress["epoch"], "samples": self._progress["samples"], "seed": self.seed}

    def load_state_dict(self, state_dict: dict) -> None:
        # Lightning warns that a mid-epoch resume restarts a plain DataLoader; this module resumes it itself.
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended")
        if state_dict.get("seed", self.seed) != self.seed:
            log.warning(
                "resuming with --data.seed %s, the checkpoint used %s: the data order changes",
                self.seed,
                state_dict["seed"],
            )
        self._resume = {"epoch": state_dict["epoch"], "samples": state_dict["samples"]}
        self._progress = dict(self._resume)
