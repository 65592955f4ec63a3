"""Training tokens/s of a real config through the Lightning application vs a plain PyTorch loop: same model, same
batches from the same DataLoader.

    python benchmarks/throughput.py                       # CPU: the pretraining config, tiny preset, fp32
    python benchmarks/throughput.py --gpu --preset gpt2-124m --batch-size 16 --accumulate 4 --steps 40  # one GPU
    python benchmarks/throughput.py --config configs/sft_ultrachat.yaml --data-path DIR    # SFT (real tokens only)

The Lightning side is `lightning-gpt fit -c CONFIG` as a user runs it: the config's callbacks, TensorBoard logger,
precision, compile, accumulation and DataLoader workers; only size flags (preset, block size, batch, steps) and, on
a CPU, the accelerator and fp32 are overridden. The plain side is the loop a nanoGPT user writes by hand around the
same module: the same optimizer, schedule, clipping, precision and compiled model, over that config's DataLoader.

Each side runs `--repeats` times, alternating; a run's speed is its real (not padding) tokens after `--warmup`
optimizer steps over the time they took, with one synchronize at each end, and the best run counts. The Lightning
side also reports MFU and peak memory and, on CUDA, host syncs per training step (torch.cuda.set_sync_debug_mode,
one extra short run). The last line is the ratio Lightning / plain. `--json PATH` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops

from lightning_gpt.batch import batch_tokens
from lightning_gpt.cli import build_cli

REPO = Path(__file__).resolve().parents[1]
SHARED_HUB = REPO.parent / "shared/data/hub"
DEFAULT_DATA = {
    "pretrain_wikitext103.yaml": "Salesforce/wikitext",
    "sft_ultrachat.yaml": "HuggingFaceH4/ultrachat_200k",
}


def cli_args(args, workdir: str, max_steps: int) -> list[str]:
    """The user's command line for this benchmark: the config, then size flags only."""
    flags = ["-c", args.config, *(word for overlay in args.overlay for word in ("-c", overlay))]
    flags += ["--data.path", args.data_path, "--trainer.max_steps", str(max_steps)]
    flags += ["--trainer.logger.init_args.save_dir", workdir, "--trainer.default_root_dir", workdir]
    flags += ["--model.preset", args.preset, "--model.block_size", str(args.block_size)]
    flags += ["--data.batch_size", str(args.batch_size), "--trainer.accumulate_grad_batches", str(args.accumulate)]
    flags += ["--trainer.enable_progress_bar", "false"]  # a log file, not a terminal
    if args.num_workers is not None:
        flags += ["--data.num_workers", str(args.num_workers)]
    if not args.gpu:
        flags += ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--model.compile", "false"]
    return flags


class _Clock(L.Callback):
    """Synchronizes and reads the clock at the start of optimizer step `warmup` and after the last step: the real
    tokens in between over that time. Nothing per step, so the run keeps its own pace."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.tokens = warmup, None, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None and trainer.global_step == self.warmup:
            _sync(pl_module.device)
            self.start = time.perf_counter()
        if self.start is not None:
            self.tokens += batch_tokens(batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == trainer.max_steps:  # the last optimizer step is taken: what follows is teardown
            _sync(pl_module.device)
            self.end = time.perf_counter()


class _SyncCounter(L.Callback):
    """Where each training batch starts in a list of recorded warnings (see host_syncs_per_step)."""

    def __init__(self, records: list) -> None:
        self.records, self.marks = records, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.marks.append(len(self.records))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def lightning_run(args, steps: int, callbacks: list) -> tuple[object, dict]:
    with tempfile.TemporaryDirectory(prefix="throughput-") as workdir:
        cli = build_cli(cli_args(args, workdir, steps), run=False)
        cli.trainer.callbacks.extend(callbacks)
        if cli.trainer.strategy.root_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        peak = torch.cuda.max_memory_allocated() if cli.trainer.strategy.root_device.type == "cuda" else None
        return cli, {"peak_bytes": peak}


def lightning_side(args) -> dict:
    clock = _Clock(args.warmup)
    cli, extra = lightning_run(args, args.steps, [clock])
    flops_per_token = cli.model.model.flops_per_token(args.block_size)
    return {"tokens_per_s": clock.tokens / (clock.end - clock.start), "flops_per_token": flops_per_token, **extra}


def plain_side(args) -> dict:
    """The same module and DataLoader, trained by hand."""
    with tempfile.TemporaryDirectory(prefix="throughput-") as workdir:
        cli = build_cli(cli_args(args, workdir, args.steps), run=False)
    module, dm, trainer = cli.model, cli.datamodule, cli.trainer
    device = trainer.strategy.root_device
    dm.trainer = trainer  # the data module reads the accumulation (items per optimizer step) from its trainer
    dm.prepare_data()
    dm.setup("fit")
    module.to(device)
    module.configure_model()  # compiles in place, as Lightning's fit does
    model = module.model.train()
    optimizer, schedule = module.build_optimizer(total_steps=args.steps)
    bf16 = trainer.precision == "bf16-mixed"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    clip = trainer.gradient_clip_val
    step, tokens, start = 0, 0, None
    for micro, batch in enumerate(dm.train_dataloader(), start=1):
        if step == args.warmup and start is None:
            _sync(device)
            start = time.perf_counter()
        x, y = batch.inputs.to(device, non_blocking=True), batch.targets.to(device, non_blocking=True)
        step_targets = batch.step_count.to(device, non_blocking=True)
        with autocast:
            nll_sum = model(x, y)
        (nll_sum / step_targets.flatten()[0].clamp(min=1)).backward()
        tokens += batch_tokens(batch) if start is not None else 0
        if micro % args.accumulate == 0:
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            step += 1
            if step == args.steps:
                break
    _sync(device)
    return {"tokens_per_s": tokens / (time.perf_counter() - start)}


def host_syncs_per_step(args) -> dict:
    """One more short Lightning run with CUDA's sync debug mode on: the syncs of each training batch, counted from
    the warnings it raises (each batch gets those raised from its start to the next batch's)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counter = _SyncCounter(caught)  # reads the list as it fills
        torch.cuda.set_sync_debug_mode("warn")
        try:
            cli, _ = lightning_run(args, args.warmup + 10, [counter])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [i for i, w in enumerate(caught) if "synchroniz" in str(w.message)]
    marks = counter.marks
    per_batch = [
        sum(a <= i < b for i in syncs) for a, b in zip(marks, marks[1:], strict=False)
    ]  # the last one left out
    first = args.warmup * args.accumulate  # micro-batches of the warm-up steps
    log_every = cli.trainer.log_every_n_steps * args.accumulate
    quiet = [n for i, n in enumerate(per_batch) if i >= first and (i + 1) % log_every]
    timed = per_batch[first:]
    return {"syncs_per_batch_max_between_logs": max(quiet, default=0), "syncs_per_batch_mean": sum(timed) / len(timed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs/pretrain_wikitext103.yaml"))
    parser.add_argument("--overlay", action="append", default=[],
                        help="a config read after --config: configs/pretrain_wikitext103_fast.yaml")  # fmt: skip
    parser.add_argument("--data-path", help="default: the config's dataset in ../shared/data/hub")
    parser.add_argument("--gpu", action="store_true", help="run as configured (CUDA, bf16, compile)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--accumulate", type=int, default=2, help="micro-batches per optimizer step")
    parser.add_argument("--num-workers", type=int, default=None, help="default: the config's")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps a run")
    parser.add_argument("--warmup", type=int, default=3, help="optimizer steps not timed (compilation, warm-up)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    if args.data_path is None:
        args.data_path = str(SHARED_HUB / DEFAULT_DATA.get(Path(args.config).name, ""))
        if not Path(args.data_path).is_dir():
            parser.error(f"no --data-path given and {args.data_path} is not here; pass --data-path DIR")
    if args.warmup >= args.steps:
        parser.error("--warmup must be smaller than --steps")
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu needs a CUDA GPU; without it the benchmark runs on the CPU")
    plain, lightning = [], []
    for _ in range(args.repeats):  # alternating, so that a slow spell of the machine hits both sides
        plain.append(plain_side(args))
        lightning.append(lightning_side(args))
    best_plain = max(r["tokens_per_s"] for r in plain)
    best = max(lightning, key=lambda r: r["tokens_per_s"])
    device = torch.device("cuda" if args.gpu else "cpu")
    name = torch.cuda.get_device_name() if args.gpu else f"CPU, {torch.get_num_threads()} threads"
    precision = "bf16-mixed" if args.gpu else "32-true"
    peak_flops = get_available_flops(device, torch.bfloat16 if args.gpu else torch.float32)
    result = {
        "device": name,
        "config": " + ".join(Path(path).name for path in [args.config, *args.overlay]),
        "preset": args.preset,
        "micro_batch": args.batch_size,
        "accumulate": args.accumulate,
        "block_size": args.block_size,
        "precision": precision,
        "plain_tokens_per_s": best_plain,
        "lightning_tokens_per_s": best["tokens_per_s"],
        "ratio": best["tokens_per_s"] / best_plain,
        "mfu": best["tokens_per_s"] * best["flops_per_token"] / peak_flops if peak_flops else None,
        "peak_gib": best["peak_bytes"] / 2**30 if best["peak_bytes"] else None,
    }
    if args.gpu:
        result.update(host_syncs_per_step(args))
    shape = f"micro-batch {args.batch_size} x {args.block_size}, {args.accumulate} accumulated"
    print(f"device: {name}; {result['config']}, preset {args.preset}, {shape}, {precision}")
    print(f"plain PyTorch loop: {best_plain:,.0f} tokens/s")
    print(f"Lightning:          {best['tokens_per_s']:,.0f} tokens/s")
    if result["mfu"] is not None:
        print(
            f"Lightning MFU: {result['mfu']:.1%} of the GPU's dense bf16 peak; peak memory {result['peak_gib']:.1f} GiB"
        )
    if "syncs_per_batch_mean" in result:
        print(f"host syncs per training batch: {result['syncs_per_batch_max_between_logs']} at most between log "
              f"steps, {result['syncs_per_batch_mean']:.2f} on average")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"ratio Lightning / plain: {result['ratio']:.3f}")


if __name__ == "__main__":
    main()
