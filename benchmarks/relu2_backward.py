"""ReLU squared, forward and backward, in eager mode: autograd through torch's own ops (`F.relu(u).square()`)
against lightning_gpt's autograd function (`_ReLUSquared`, the ReLU2 MLP's), on one layer's hidden activations.

    python benchmarks/relu2_backward.py                      # 8 x 256 tokens at 4 x 256: (2,048, 1,056)
    python benchmarks/relu2_backward.py --rows 16384 --hidden 3072

The two sides alternate, `--repeats` times each, and the medians are printed; the last line is ours over autograd's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lightning_gpt.model import _ReLUSquared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048, help="tokens in the batch")
    parser.add_argument("--hidden", type=int, default=1056, help="the MLP's hidden width (relu2 at n_embd 256)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    u0, grad = torch.randn(args.rows, args.hidden), torch.randn(args.rows, args.hidden)
    sides = {"ours, _ReLUSquared": _ReLUSquared.apply, "autograd, F.relu(u).square()": lambda u: F.relu(u).square()}

    def forward_backward(fn) -> float:
        u = u0.detach().requires_grad_()
        start = time.perf_counter()
        fn(u).backward(grad)
        return time.perf_counter() - start

    for fn in sides.values():
        forward_backward(fn)  # warm-up
    times = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, fn in sides.items():
            times[name].append(forward_backward(fn))
    print(f"CPU, {torch.get_num_threads()} threads; u ({args.rows}, {args.hidden}); median of {args.repeats}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, seconds in medians.items():
        print(f"{name:32s} {1000 * seconds:8.2f} ms")
    ours, autograds = (medians[name] for name in sides)
    print(f"ReLU squared, ours / autograd's: {ours / autograds:.2f}")


if __name__ == "__main__":
    main()
