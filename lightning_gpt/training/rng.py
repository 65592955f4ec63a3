"""Random-number-generator states in a form that a weights-only checkpoint load accepts (tensors, ints, tuples).

Dropout draws from the global torch generator, so an exact resume must restore it; Lightning's checkpoints do not
hold it, and its own `_collect_rng_states` keeps numpy's state as an ndarray, which weights-only loading refuses.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def collect_rng_states() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        # This process's own GPU only: under DDP each rank drives one device, and every rank's generator has had the
        # same seed and the same draws, so rank 0's state is each rank's.
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if isinstance(states.get("cuda"), torch.Tensor) and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])  # into the current device
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
