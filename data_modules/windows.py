"""Fixed-length windows over a flat token array, and the samplers that order and shard them.

The samplers subclass `DistributedSampler` only so that Lightning leaves them in place under DDP instead of
wrapping them: they do their own sharding, because Lightning's wrapper pads the last shard with repeated
samples (which would skew validation loss) and knows nothing of resuming mid-epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from data_modules.token_cache import open_tokens
from lightning_gpt.model import IGNORE_INDEX


class _MemmapTokens:
    """Opens the memory map lazily in each process: a pickled memmap would be copied whole into every worker."""

    def __init__(self, bin_path: Path, meta: dict) -> None:
        self.bin_path, self.meta = bin_path, meta
        self._tokens: np.ndarray | None = None

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = open_tokens(self.bin_path, self.meta)
        return self._tokens

    def __len__(self) -> int:
        return self.meta["n_tokens"]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}


class TrainWindows(Dataset):
    """Item `offset` is (x, y) = tokens[offset : offset+T], tokens[offset+1 : offset+T+1], each (T,) int64."""

    def __init__(self, source: _MemmapTokens, block_size: int) -> None:
        self.source, self.block_size = source, block_size

    def __len__(self) -> int:
        return len(self.source) - self.block_size  # every valid start offset

    def __getitem__(self, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = torch.from_numpy(self.source.tokens[offset : offset + self.block_size + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]


class EvalWindows(Dataset):
    """Non-overlapping windows that predict every token of the split exactly once; the last window is padded,
    with IGNORE_INDEX targets on the padding."""

    def __init__(self, source: _MemmapTokens, block_size: int, pad_id: int) -> None:
        self.source, self.block_size, self.pad_id = source, block_size, pad_id

    def __len__(self) -> int:
        n_targets = len(self.source) - 1
        return -(-n_targets // self.block_size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.block_size
        chunk = torch.from_numpy(self.source.tokens[index * T : index * T + T + 1].astype(np.int64))
        x = torch.full((T,), self.pad_id, dtype=torch.long)
        y = torch.full((T,), IGNORE_INDEX, dtype=torch.long)
        x[: len(chunk) - 1], y[: len(chunk) - 1] = chunk[:-1], chunk[1:]
        return x, y


class ResumableWindowSampler(DistributedSampler):
    """Start offsets of one epoch's training windows, for one rank.

    Epoch e cuts the corpus into non-overlapping windows after a random shift and visits them in a random
    order, both drawn from (seed, e): the order is a function of the seed and the step alone. Rank r takes
    every world_size-th window. `resume_from(epoch, samples)` skips what a checkpointed run already consumed.
    """

    def __init__(self, dataset: TrainWindows, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.block_size = dataset.block_size
        self.windows_per_epoch = len(dataset) // self.block_size  # room left for a shift of up to T-1
        self.per_rank = self.windows_per_epoch // num_replicas
        self._resume_epoch, self._resume_samples = -1, 0

    def resume_from(self, epoch: int, samples: int) -> None:
        self._resume_epoch, self._resume_samples = epoch, samples

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        shift = int(torch.randint(self.block_size, (1,), generator=generator))
        order = torch.randperm(self.windows_per_epoch, generator=generator)
        mine = order[self.rank : self.per_rank * self.num_replicas : self.num_replicas]
        start = self._resume_samples if self.epoch == self._resume_epoch else 0
        return iter((shift + mine[start:] * self.block_size).tolist())


class ShardSampler(DistributedSampler):
    """Evaluation windows in order, rank r taking r, r+W, ...: every window once across ranks, none repeated."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.indices = range(rank, len(dataset), num_replicas)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)
