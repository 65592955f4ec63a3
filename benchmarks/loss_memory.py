"""Peak memory and time of one training step: the LM head's cross-entropy on whole logits vs in chunks.

    python benchmarks/loss_memory.py                         # CPU: tiny preset, 8 x 1,024 tokens, fp32
    python benchmarks/loss_memory.py --preset gpt2-124m --batch-size 16 --precision bf16-mixed   # one CUDA GPU

Each side runs in a fresh process (so one side's freed memory cannot hide the other's peak): forward, backward and
an AdamW step, `--steps` times. On CUDA the peak is torch.cuda.max_memory_allocated; on the CPU it is the process's
peak resident memory above what it held before the first step. The last line is the ratio whole / chunked.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from lightning_gpt.model import GPT, IGNORE_INDEX, GPTConfig


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def one_side(args) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset(args.preset, vocab_size=50257, block_size=args.block_size)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randint(0, 50257, (args.batch_size, args.block_size), device=device)
    y = torch.randint(0, 50257, (args.batch_size, args.block_size), device=device)
    bf16 = args.precision == "bf16-mixed"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with_logits = args.side == "whole"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = peak_rss_bytes()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        with autocast:
            if with_logits:
                loss = F.cross_entropy(model.logits(x).flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX)
            else:
                loss = model(x, y) / (y != IGNORE_INDEX).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss_bytes()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return {"peak": peak - before, "step_s": sorted(times)[len(times) // 2], "device": name, "loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--side", choices=["whole", "chunked"], help=argparse.SUPPRESS)  # the child processes
    args = parser.parse_args()
    if args.side:
        print(json.dumps(one_side(args)))
        return
    results = {}
    for side in ("whole", "chunked"):
        child = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--side", side, "--json", ""],
            capture_output=True,
            text=True,
            check=True,
        )
        results[side] = json.loads(child.stdout.strip().splitlines()[-1])
    whole, chunked = results["whole"], results["chunked"]
    print(
        f"device: {whole['device']}; preset {args.preset}, batch {args.batch_size} x {args.block_size}, "
        f"{args.precision}, vocab 50,257 (padded 50,304)"
    )
    for side, r in results.items():
        print(
            f"{side:>8} logits: peak {r['peak'] / 2**30:.2f} GiB above the model, "
            f"median step {r['step_s'] * 1e3:.0f} ms, loss {r['loss']:.4f}"
        )
    print(f"step time chunked / whole: {chunked['step_s'] / whole['step_s']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"peak memory whole / chunked: {whole['peak'] / chunked['peak']:.2f}")


if __name__ == "__main__":
    main()
