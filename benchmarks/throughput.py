"""Training tokens/s through the Lightning application vs a plain PyTorch loop: same model, same batches.

    python benchmarks/throughput.py                       # CPU: tiny model, fp32
    python benchmarks/throughput.py --preset gpt2-124m --block-size 1024 --batch-size 16 --precision bf16-mixed \
        --compile --steps 60                              # one CUDA GPU; also prints MFU

Both sides run the same optimizer (AdamW, decay groups), schedule, gradient clipping and precision. Each side runs
`--repeats` times, alternating; speed is tokens per batch over the median time from one step's start to the next,
pooled over all runs, which a busy machine's spikes do not move. The last line is the ratio Lightning / plain.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from timing import training_only_trainer  # benchmarks/timing.py (run as scripts)

from lightning_gpt.lit_module import GPTModule

REAL_VALIDATION = Path(__file__).resolve().parents[2] / "shared/data/hub/Salesforce/wikitext"


def make_batches(n: int, batch_size: int, block_size: int, vocab_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Windows of real WikiText tokens when the shared mirror is here, random ids otherwise."""
    generator = torch.Generator().manual_seed(0)
    tokens = None
    if REAL_VALIDATION.is_dir():
        from data_modules import WikiText103

        dm = WikiText103(path=str(REAL_VALIDATION), block_size=block_size, batch_size=batch_size, num_workers=0)
        dm.setup("validate")
        tokens = torch.from_numpy(np.asarray(dm.tokens("val")).astype(np.int64))
    batches = []
    for _ in range(n):
        if tokens is None:
            chunk = torch.randint(0, vocab_size, (batch_size, block_size + 1), generator=generator)
        else:
            starts = torch.randint(0, len(tokens) - block_size - 1, (batch_size,), generator=generator)
            chunk = torch.stack([tokens[s : s + block_size + 1] for s in starts.tolist()])
        batches.append((chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()))
    return batches


def build_module(args) -> GPTModule:
    torch.manual_seed(0)
    return GPTModule(preset=args.preset, block_size=args.block_size, compile=args.compile, warmup_steps=10)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_loop(args, batches, device) -> list[float]:
    """The loop a nanoGPT user writes by hand. Returns the seconds between consecutive step starts."""
    module = build_module(args).to(device)
    module.configure_model()
    model = module.model.train()
    optimizer, schedule = module.build_optimizer(total_steps=len(batches))  # the same as Lightning's
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16-mixed" else nullcontext()
    starts = []
    for x, y in batches:
        sync(device)
        starts.append(time.perf_counter())
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
    sync(device)
    starts.append(time.perf_counter())
    return list(np.diff(starts[args.warmup :]))


class _StepTimer(L.Callback):
    """Times from one step's start to the next: Lightning's own work between steps is inside the interval."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        sync(pl_module.device)
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self.starts.append(time.perf_counter())


def lightning_loop(args, batches, device) -> list[float]:
    """The same training through Trainer.fit. Returns the seconds between consecutive step starts."""
    module = build_module(args)
    timer = _StepTimer()
    trainer = training_only_trainer(device.type, args.precision, len(batches), [timer])
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, pin_memory=device.type == "cuda")
    trainer.fit(module, train_dataloaders=loader)
    return list(np.diff(timer.starts[args.warmup :]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=8, help="steps not timed (compilation, allocator warm-up)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_float32_matmul_precision("high")
    batches = make_batches(args.steps, args.batch_size, args.block_size, 50257)
    plain, lightning = [], []
    for _ in range(args.repeats):  # alternating, so that a slow spell of the machine hits both sides
        plain += plain_loop(args, batches, device)
        lightning += lightning_loop(args, batches, device)
    tokens = args.batch_size * args.block_size
    plain_speed, lightning_speed = tokens / np.median(plain), tokens / np.median(lightning)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; preset {args.preset}, batch {args.batch_size} x {args.block_size}, {args.precision}")
    print(
        f"{len(plain)} timed steps a side; median step: plain {np.median(plain) * 1e3:.1f} ms, "
        f"Lightning {np.median(lightning) * 1e3:.1f} ms"
    )
    print(f"plain PyTorch loop: {plain_speed:,.0f} tokens/s")
    print(f"Lightning:          {lightning_speed:,.0f} tokens/s")
    peak = get_available_flops(device, torch.bfloat16 if args.precision == "bf16-mixed" else torch.float32)
    if peak:
        flops = build_module(args).model.flops_per_token(args.block_size)
        print(f"Lightning MFU: {lightning_speed * flops / peak:.1%} of the GPU's dense peak")
    print(f"ratio Lightning / plain: {lightning_speed / plain_speed:.3f}")


if __name__ == "__main__":
    main()
