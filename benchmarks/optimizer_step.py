"""The optimizer step of the fast recipe off CUDA, piece by piece: Muon's Newton-Schulz iteration on the blocks'
matrices, plain (torch.optim.Muon's, in float32) against the spectral form lightning_gpt uses for the larger ones;
Muon's whole update of those matrices, in turn against side by side in threads (lightning_gpt's step); and AdamW on
the tied embedding, foreach (torch's default on the CPU) against fused.

    python benchmarks/optimizer_step.py                                  # the CPU shape: 4 x 256, GPT-2's vocabulary
    python benchmarks/optimizer_step.py --n-layer 12 --n-embd 768        # gpt2-124m's matrices

Each side is timed `--repeats` times, alternating, and the median printed; the last two lines are the ratios: the
Newton-Schulz time, spectral form over plain, and Muon's update, side by side over in turn.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import lightning_gpt.training.muon as muon
from lightning_gpt.model import GPT, GPTConfig

COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's


def orthogonalized_all(matrices: list[torch.Tensor], spectral: bool) -> None:
    """Muon's iteration over every matrix, in the spectral form where lightning_gpt takes it, or plain
    (torch.optim.Muon's iteration, in float32) everywhere."""
    saved = muon.SPECTRAL_FORM_MIN_WORK
    muon.SPECTRAL_FORM_MIN_WORK = saved if spectral else math.inf
    try:
        for m in matrices:
            muon.orthogonalized(m, COEFFICIENTS, 5, 1e-7)
    finally:
        muon.SPECTRAL_FORM_MIN_WORK = saved


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--mlp", default="relu2", choices=["relu2", "swiglu"])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = GPTConfig(n_layer=args.n_layer, n_head=4, n_embd=args.n_embd, mlp=args.mlp, block_size=64)
    model = GPT(config)
    matrices = [torch.randn_like(p) for p in model.blocks.parameters() if p.dim() == 2]
    embedding = model.tok_emb.weight
    sides = {
        "Newton-Schulz, plain": lambda: orthogonalized_all(matrices, spectral=False),
        "Newton-Schulz, spectral form (ours)": lambda: orthogonalized_all(matrices, spectral=True),
    }
    params = [torch.nn.Parameter(torch.randn_like(m)) for m in matrices]
    for p, m in zip(params, matrices, strict=True):
        p.grad = m
    group = muon.Muon(params, lr=1e-4).param_groups[0]
    updates = [(group, p, {}) for p in params]  # lightning_gpt's step: each matrix's update, in threads on the CPU
    sides["Muon's update, in turn"] = lambda: [muon._muon_update(*u) for u in updates]
    sides["Muon's update, side by side (ours)"] = lambda: muon._update_side_by_side(updates)
    for fused in (False, True):
        optimizer = torch.optim.AdamW([embedding], lr=1e-4, fused=fused)
        embedding.grad = torch.randn_like(embedding)
        optimizer.step()  # the moments exist: the timed steps are steady ones
        sides[f"AdamW on the embedding, {'fused' if fused else 'foreach'}"] = optimizer.step
    torch.set_grad_enabled(False)  # as in an optimizer's step
    for fn in sides.values():
        fn()  # warm-up
    times = {name: [] for name in sides}
    for _ in range(args.repeats):  # alternating, so a slow spell of the machine hits every side
        for name, fn in sides.items():
            times[name].append(timed(fn))
    shapes = sorted({tuple(m.shape) for m in matrices})
    print(f"CPU, {torch.get_num_threads()} threads; {len(matrices)} matrices of shapes {shapes}; "
          f"embedding {tuple(embedding.shape)}; median of {args.repeats}")  # fmt: skip
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, seconds in medians.items():
        print(f"{name:45s} {1000 * seconds:8.1f} ms")
    adamw = medians["AdamW on the embedding, fused"] / medians["AdamW on the embedding, foreach"]
    print(f"AdamW, fused / foreach: {adamw:.2f}")
    ratio = medians["Newton-Schulz, spectral form (ours)"] / medians["Newton-Schulz, plain"]
    print(f"Newton-Schulz, spectral form / plain: {ratio:.2f}")
    ratio = medians["Muon's update, side by side (ours)"] / medians["Muon's update, in turn"]
    print(f"Muon's update, side by side / in turn: {ratio:.2f}")


if __name__ == "__main__":
    main()
