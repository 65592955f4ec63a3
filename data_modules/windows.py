"""Fixed-length windows over a flat token array, and the samplers that order and shard them.

The samplers subclass `DistributedSampler` only so that Lightning leaves them in place under DDP instead of
wrapping them: they do their own sharding, because Lightning's wrapper pads the last shard with repeated
samples (which would skew validation loss) and knows nothing of resuming mid-epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from data_modules.token_cache import open_array
from lightning_gpt.model import IGNORE_INDEX


class LazyArray:
    """One array of a cache, memory-mapped lazily in each process: a pickled memmap would be copied whole into
    every DataLoader worker."""

    def __init__(self, base: Path, meta: dict, name: str = "tokens") -> None:
        self.base, self.meta, self.name = base, meta, name
        self._array: np.ndarray | None = None

    @property
    def values(self) -> np.ndarray:
        if self._array is None:
            self._array = open_array(self.base, self.meta, self.name)
        return self._array

    def __len__(self) -> int:
        return self.meta["arrays"][self.name]["length"]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}


class TrainWindows(Dataset):
    """Item `offset` is (x, y) = tokens[offset : offset+T], tokens[offset+1 : offset+T+1], each (T,) int64; item
    `(offset, step_targets)` (from a ResumableShuffleSampler that counts targets) appends step_targets."""

    def __init__(self, source: LazyArray, block_size: int) -> None:
        self.source, self.block_size = source, block_size

    def __len__(self) -> int:
        return len(self.source) - self.block_size  # every valid start offset

    def __getitem__(self, key: int | tuple[int, int]):
        offset, step_targets = key if isinstance(key, tuple) else (key, None)
        chunk = torch.from_numpy(self.source.values[offset : offset + self.block_size + 1].astype(np.int64))
        if step_targets is None:
            return chunk[:-1], chunk[1:]
        return chunk[:-1], chunk[1:], torch.tensor(step_targets)


class EvalWindows(Dataset):
    """Non-overlapping windows that predict every token of the split exactly once; the last window is padded,
    with IGNORE_INDEX targets on the padding."""

    def __init__(self, source: LazyArray, block_size: int, pad_id: int) -> None:
        self.source, self.block_size, self.pad_id = source, block_size, pad_id

    def __len__(self) -> int:
        n_targets = len(self.source) - 1
        return -(-n_targets // self.block_size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.block_size
        chunk = torch.from_numpy(self.source.values[index * T : index * T + T + 1].astype(np.int64))
        x = torch.full((T,), self.pad_id, dtype=torch.long)
        y = torch.full((T,), IGNORE_INDEX, dtype=torch.long)
        x[: len(chunk) - 1], y[: len(chunk) - 1] = chunk[:-1], chunk[1:]
        return x, y


class ResumableShuffleSampler(DistributedSampler):
    """The items of one epoch in an order drawn from (seed, epoch), for one rank: the order is a function of the
    seed and the step alone. Rank r takes every world_size-th item. `resume_from(epoch, items)` skips what a
    checkpointed run already consumed.

    Optimizer steps: `items_per_step` is what one rank consumes per optimizer step (batch size x gradient
    accumulation). Each rank's epoch is cut to whole steps, so that no accumulation window straddles an epoch
    boundary and every checkpoint falls between steps. With `item_targets` (scored targets per item: an array, or
    one number for all), the sampler yields (item, step_targets) pairs, step_targets being the scored targets of
    the item's whole optimizer step over all ranks: the loss divides by it (lightning_gpt/lit_module.py).
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        items_per_step: int = 1,
        item_targets: np.ndarray | int | None = None,
        epoch_source: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.n_items = self.items_per_epoch()
        self.items_per_step, self.item_targets = items_per_step, item_targets
        # The trainer's epoch, read at each new iteration. Lightning's set_epoch passes its count of processed
        # epochs, which after a resume from an end-of-epoch checkpoint is one ahead of the epoch being trained.
        self.epoch_source = epoch_source
        self.per_rank = self.n_items // num_replicas // items_per_step * items_per_step
        self._resume_epoch, self._resume_items = -1, 0

    def items_per_epoch(self) -> int:
        return len(self.dataset)

    def resume_from(self, epoch: int, items: int) -> None:
        self._resume_epoch, self._resume_items = epoch, items

    def __len__(self) -> int:
        return self.per_rank

    def _generator(self) -> torch.Generator:
        if self.epoch_source is not None:
            self.epoch = self.epoch_source()
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def _my_items(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's items still to come this epoch, and each one's step_targets (None when not counted)."""
        order = torch.randperm(self.n_items, generator=generator)[: self.per_rank * self.num_replicas]
        mine = order[self.rank :: self.num_replicas]
        # Rank r's i-th item is order[r + i * W]: optimizer step j takes positions [j*m*W, (j+1)*m*W) of `order`.
        targets = None
        if self.item_targets is not None:
            per_item = (
                torch.as_tensor(self.item_targets)[order]
                if isinstance(self.item_targets, np.ndarray)
                else torch.full_like(order, int(self.item_targets))
            )
            per_step = per_item.view(-1, self.items_per_step * self.num_replicas).sum(dim=1)  # (steps,)
            targets = per_step.repeat_interleave(self.items_per_step)  # (per_rank,)
        start = self._resume_items if self.epoch == self._resume_epoch else 0
        return mine[start:], None if targets is None else targets[start:]

    def _keys(self, items: torch.Tensor, targets: torch.Tensor | None) -> Iterator:
        if targets is None:
            return iter(items.tolist())
        return zip(items.tolist(), targets.tolist(), strict=True)

    def __iter__(self) -> Iterator:
        return self._keys(*self._my_items(self._generator()))


class ResumableWindowSampler(ResumableShuffleSampler):
    """Start offsets of one epoch's training windows: the corpus is cut into non-overlapping windows after a
    random shift, both drawn from (seed, epoch), so successive epochs see different window boundaries.

    A corpus with fewer such windows than one optimizer step takes (over all ranks) is not refused: its epoch is one
    step of windows at start offsets drawn from (seed, epoch) among all of them, overlapping (and repeated where
    there are fewer offsets than the step takes)."""

    def __init__(self, dataset: TrainWindows, num_replicas: int = 1, rank: int = 0, seed: int = 0, **kwargs) -> None:
        self.block_size = dataset.block_size
        self.step_items = kwargs.get("items_per_step", 1) * num_replicas  # windows of one step, all ranks
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, seed=seed, **kwargs)

    @property
    def small(self) -> bool:
        """Fewer non-overlapping windows than one optimizer step takes."""
        return len(self.dataset) // self.block_size < self.step_items

    def items_per_epoch(self) -> int:
        if self.small:
            return self.step_items
        return len(self.dataset) // self.block_size  # leaves room for a shift of up to T-1

    def __iter__(self) -> Iterator:
        generator = self._generator()
        if self.small:
            offsets = len(self.dataset)
            starts = (
                torch.randperm(offsets, generator=generator)[: self.n_items]
                if offsets >= self.n_items
                else torch.randint(offsets, (self.n_items,), generator=generator)
            )
            items, targets = self._my_items(generator)
            return self._keys(starts[items], targets)
        shift = int(torch.randint(self.block_size, (1,), generator=generator))
        items, targets = self._my_items(generator)
        return self._keys(shift + items * self.block_size, targets)


class ShardSampler(DistributedSampler):
    """Evaluation windows in order, rank r taking r, r+W, ...: every window once across ranks, none repeated."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.indices = range(rank, len(dataset), num_replicas)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)
