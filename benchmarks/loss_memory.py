"""Peak memory and time of one training step: the LM head's cross-entropy on whole logits vs in chunks, eager and
(with --compile) compiled.

    python benchmarks/loss_memory.py                         # CPU: tiny preset, 8 x 1,024 tokens, fp32
    python benchmarks/loss_memory.py --n-layer 4 --n-head 4 --n-embd 256 --block-size 256 --compile   # CPU shape
    python benchmarks/loss_memory.py --preset gpt2-124m --batch-size 16 --precision bf16-mixed --compile  # one GPU

Each side runs in a fresh process (so one side's freed memory cannot hide the other's peak): forward, backward and
an AdamW step, `--warmup` untimed steps (compilation) then `--steps` timed ones. On CUDA the peak is
torch.cuda.max_memory_allocated over the timed steps; on the CPU it is the process's peak resident memory above
what it held before the first step (for a compiled side that includes the compiler's own). The sides: `whole`,
torch's cross-entropy over `GPT.logits` (all logits at once); `chunked`, `GPT.forward`'s chunked loss
(lightning_gpt/chunked_loss.py); and compiled, `GPT.forward` under torch.compile with WHOLE_LOGITS_MAX_BYTES set so
that it takes whole logits (`whole-compiled`) or chunks (`chunked-compiled`). The last line is the peak-memory
ratio whole / chunked.
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

import lightning_gpt.model
from lightning_gpt.model import GPT, IGNORE_INDEX, GPTConfig

SIDES = ("whole", "chunked", "whole-compiled", "chunked-compiled")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def one_side(args) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    shape = {k: v for k, v in (("n_layer", args.n_layer), ("n_head", args.n_head), ("n_embd", args.n_embd)) if v}
    config = GPTConfig.from_preset(args.preset, vocab_size=50257, block_size=args.block_size, **shape)
    model = GPT(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randint(0, 50257, (args.batch_size, args.block_size), device=device)
    y = torch.randint(0, 50257, (args.batch_size, args.block_size), device=device)
    bf16 = args.precision == "bf16-mixed"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    if args.side.endswith("compiled"):
        # GPT.forward decides by this bound while it is compiled: whole logits below it, chunks above.
        lightning_gpt.model.WHOLE_LOGITS_MAX_BYTES = float("inf") if args.side == "whole-compiled" else 0
        model.compile()
    before = torch.cuda.memory_allocated() if device.type == "cuda" else peak_rss_bytes()
    times = []
    for step in range(args.warmup + args.steps):
        if step == args.warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with autocast:
            if args.side == "whole":
                loss = F.cross_entropy(model.logits(x).flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX)
            else:
                loss = model(x, y) / (y != IGNORE_INDEX).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss_bytes()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return {"peak": peak - before, "step_s": sorted(times)[len(times) // 2], "step_times": times, "device": name,
            "loss": float(loss)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--n-layer", type=int, help="overrides the preset's")
    parser.add_argument("--n-head", type=int, help="overrides the preset's")
    parser.add_argument("--n-embd", type=int, help="overrides the preset's")
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps first (a compiled side: 2 at least)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every side, alternating; the medians count")
    parser.add_argument("--compile", action="store_true", help="also the compiled sides")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # the child processes
    in_process = "every side in this process (a check that it runs: the peaks then overlap)"
    parser.add_argument("--in-process", action="store_true", help=in_process)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(one_side(args)))
        return
    sides = SIDES if args.compile else SIDES[:2]
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for _ in range(args.rounds):  # alternating, so that a change of load on the machine reaches every side
        for side in sides:
            warmup = max(args.warmup, 2) if side.endswith("compiled") else args.warmup  # compilation is not timed
            if args.in_process:
                runs[side].append(one_side(argparse.Namespace(**{**vars(args), "side": side, "warmup": warmup})))
                continue
            child = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--warmup", str(warmup), "--side", side, "--json", ""],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[side].append(json.loads(child.stdout.strip().splitlines()[-1]))
    results = {}
    for side, side_runs in runs.items():
        times = sorted(t for r in side_runs for t in r["step_times"])
        results[side] = {**side_runs[0], "peak": max(r["peak"] for r in side_runs), "step_s": times[len(times) // 2],
                         "step_times": times}  # fmt: skip
    whole, chunked = results["whole"], results["chunked"]
    shape = f"{args.n_layer or ''}x{args.n_embd or ''}" if args.n_embd or args.n_layer else f"preset {args.preset}"
    print(
        f"device: {whole['device']}; {shape}, batch {args.batch_size} x {args.block_size}, {args.precision}, "
        "vocab 50,257 (padded 50,304)"
    )
    for side, r in results.items():
        print(
            f"{side:>16} logits: peak {r['peak'] / 2**30:.2f} GiB above the model, "
            f"median step {r['step_s'] * 1e3:.0f} ms ({len(r['step_times'])} steps), loss {r['loss']:.4f}"
        )
    print(f"step time chunked / whole: {chunked['step_s'] / whole['step_s']:.2f}")
    if args.compile:
        compiled = results["chunked-compiled"]["step_s"] / results["whole-compiled"]["step_s"]
        print(f"compiled step time chunked / whole: {compiled:.2f}; whole compiled / chunked eager: "
              f"{results['whole-compiled']['step_s'] / chunked['step_s']:.2f}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    # In one process (--in-process) the later sides' peaks hide under the first's: no ratio then.
    ratio = f"{whole['peak'] / chunked['peak']:.2f}" if chunked["peak"] else "n/a (the peaks overlap in one process)"
    print(f"peak memory whole / chunked: {ratio}")


if __name__ == "__main__":
    main()
