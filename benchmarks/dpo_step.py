"""DPO step time and peak memory against SFT on the same tokens, with the reference live and precomputed.

    python benchmarks/dpo_step.py                          # CPU: tiny model, fp32, 2 pairs x 128 tokens
    python benchmarks/dpo_step.py --preset gpt2-124m --block-size 1024 --batch-size 8 --precision bf16-mixed \
        --steps 30 --warmup 8                              # one CUDA GPU

Three sides, each a full optimizer step (forward, backward, AdamW step, zero_grad) through Trainer.fit and the
module's own training_step, on the same batches of B preference pairs, (2B, L) rows: real UltraFeedback pairs
(the shared mirror's train_prefs split, through data_modules.UltraFeedback) when present, random ones otherwise.

    sft        GPTModule on (x, y): the same 2B sequences, loss on the answer tokens
    dpo-live   DPOModule, the reference's forward pass in every step
    dpo-pre    DPOModule with precompute_reference: the reference's log-probabilities of the timed pairs are
               computed once by the module (on_train_start, not timed) and each step reads them by pair id

Each side runs in its own process (`--repeats` times, the sides alternating), so that its memory is its own: on
CUDA the peak allocated memory of the training steps, on CPU the growth of the process's peak RSS during fit. Step
time is the median, pooled over all runs, of the time from one step's start to the next; the first `--warmup`
steps of a run are not timed. The last line is the ratios DPO live / SFT and DPO precomputed / SFT.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from timing import training_only_trainer  # benchmarks/timing.py (run as scripts)
from torch.utils.data import DataLoader, Dataset

from lightning_gpt.batch import Batch
from lightning_gpt.chat import chat_tokenizer
from lightning_gpt.model import IGNORE_INDEX
from lightning_gpt.training.dpo import DPOModule
from lightning_gpt.training.language_model import GPTModule

REAL_PAIRS = Path(__file__).resolve().parents[2] / "shared/data/hub/HuggingFaceH4/ultrafeedback_binarized"
SIDES = ("sft", "dpo-live", "dpo-pre")


class TimedBatches(Dataset):
    """The timed batches, fixed, laid out as data_modules.ultrafeedback.PairBatches: item i a Batch, with its pair
    count and pair ids for a training sampler's key (i, step_pairs). `batches` (each batch's pair ids), `prompt`
    (one entry per pair) and `fingerprint()` are what DPOModule reads of a PairBatches to precompute the reference's
    log-probabilities."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        self.items = batches
        self.batches = [pair_ids.numpy() for _, _, pair_ids in batches]
        self.prompt = np.zeros(sum(len(b) for b in self.batches))

    def __len__(self) -> int:
        return len(self.items)

    def fingerprint(self) -> str:
        return "timed-batches"  # fixed batches: the one set of pairs the table is computed for

    def __getitem__(self, key: int | tuple[int, int]):
        index, step_pairs = key if isinstance(key, tuple) else (key, None)
        x, y, pair_ids = self.items[index]
        return Batch(x, y) if step_pairs is None else Batch(x, y, torch.tensor(step_pairs), pair_ids=pair_ids)


def make_batches(args, vocab_size: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], str]:
    """`args.steps` batches of `args.batch_size` pairs: (x (2B, L), y (2B, L), pair ids (B,)), pairs numbered from 0
    in the order they come. Real UltraFeedback pairs when the shared mirror is here, random ids otherwise."""
    raw = []
    if REAL_PAIRS.is_dir():
        from data_modules import UltraFeedback

        dm = UltraFeedback(
            path=str(REAL_PAIRS),
            block_size=args.block_size,
            batch_size=args.batch_size,
            num_workers=0,
        )
        for batch in dm.train_dataloader():
            raw.append((batch.inputs, batch.targets))
            if len(raw) == args.steps:
                break
        source = f"UltraFeedback train_prefs ({REAL_PAIRS})"
    else:
        from data_modules.ultrafeedback import answer_rows

        generator = torch.Generator().manual_seed(0)
        eot = chat_tokenizer().eot_id
        for _ in range(args.steps):
            parts = []  # (prompt, chosen, rejected): as UltraFeedback cuts them, each sequence fits block_size + 1
            for _ in range(args.batch_size):
                p = int(torch.randint(2, args.block_size // 2 + 1, (), generator=generator))
                c, r = torch.randint(1, args.block_size + 2 - p, (2,), generator=generator).tolist()
                parts.append([torch.randint(0, vocab_size, (n,), generator=generator) for n in (p, c, r)])
            raw.append(answer_rows([(p, c) for p, c, _ in parts] + [(p, r) for p, _, r in parts], eot))
        source = "random pairs (no shared UltraFeedback mirror)"
    batches, first = [], 0
    for x, y in raw:
        pairs = x.shape[0] // 2
        batches.append((x, y, torch.arange(first, first + pairs)))
        first += pairs
    return batches, source


class _StepTimer(L.Callback):
    """Step starts (synchronised), the one-off time before the first step, and peak memory of the steps."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.train_start = 0.0
        self.cuda_peak = 0

    def on_train_start(self, trainer, pl_module) -> None:  # runs before the module's (the precompute)
        self.train_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
            if not self.starts:  # the weights and the precomputed table stay in the peak: they are the side's
                torch.cuda.reset_peak_memory_stats()
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
            self.cuda_peak = torch.cuda.max_memory_allocated()
        self.starts.append(time.perf_counter())


def run_side(args) -> dict:
    """One side's Trainer.fit over the saved batches, in this process. Returns its step times and memory."""
    work = Path(args.workdir)
    batches = torch.load(work / "batches.pt", weights_only=True)
    dataset = TimedBatches(batches)
    shape = {"preset": args.preset, "vocab_size": chat_tokenizer().vocab_size, "block_size": args.block_size}
    torch.manual_seed(0)
    common = {**shape, "warmup_steps": 10, "init_from": str(work / "init.ckpt")}
    if args.side == "sft":
        module = GPTModule(**common)
        loader = DataLoader(dataset, batch_size=None, shuffle=False)  # no step count: the micro-batch's own mean
    else:
        module = DPOModule(precompute_reference=args.side == "dpo-pre", **common)
        keys = [(i, len(pair_ids)) for i, (_, _, pair_ids) in enumerate(batches)]  # each batch with its pair count
        loader = DataLoader(dataset, batch_size=None, sampler=keys)
    timer = _StepTimer()
    trainer = training_only_trainer(args.device, args.precision, len(batches), [timer])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux: the peak so far
    trainer.fit(module, train_dataloaders=loader)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "steps": list(np.diff(timer.starts[args.warmup :])),
        "before_first_step": timer.starts[0] - timer.train_start,
        "cuda_peak": timer.cuda_peak,
        "rss_growth": (rss_after - rss_before) * 1024,
    }


def spawn(side: str, workdir: str) -> dict:
    """Runs one side in a fresh Python process (this script with --side) and returns its result."""
    command = [sys.executable, __file__, *sys.argv[1:], "--side", side, "--workdir", workdir]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"side {side} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2, help="preference pairs per batch (2B rows)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2, help="steps not timed (allocator warm-up)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # internal: one side, in this process
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    in_process = "every side in this process (a check that it runs: the memory figures then overlap)"
    parser.add_argument("--in-process", action="store_true", help=in_process)
    args = parser.parse_args()
    if args.warmup >= args.steps:
        parser.error("--warmup must be smaller than --steps")
    torch.set_float32_matmul_precision("high")
    if args.side:
        print(json.dumps(run_side(args)))
        return

    vocab_size = chat_tokenizer().vocab_size
    batches, source = make_batches(args, vocab_size)
    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="dpo-step-") as work:
        torch.manual_seed(0)  # the chat model that both SFT and DPO start from (random weights: speed ignores them)
        init = GPTModule(preset=args.preset, vocab_size=vocab_size, block_size=args.block_size)
        checkpoint = {"state_dict": init.state_dict(), "hyper_parameters": dict(init.hparams)}
        torch.save(checkpoint, Path(work) / "init.ckpt")
        torch.save(batches, Path(work) / "batches.pt")
        for _ in range(args.repeats):  # alternating, so that a slow spell of the machine hits every side
            for side in SIDES:
                if args.in_process:
                    results[side].append(run_side(argparse.Namespace(**{**vars(args), "side": side, "workdir": work})))
                else:
                    results[side].append(spawn(side, work))

    rows = sum(x.shape[0] for x, _, _ in batches) / len(batches)
    positions = sum(x.numel() for x, _, _ in batches) / len(batches)
    answers = sum(int((y != IGNORE_INDEX).sum()) for _, y, _ in batches) / len(batches)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device}; preset {args.preset}, {args.precision}; data: {source}")
    print(
        f"{len(batches)} batches of {args.batch_size} pairs ({rows:.0f} rows), on average {positions:,.0f} token "
        f"positions of which {answers:,.0f} answer tokens ({answers / positions:.0%}); "
        f"{len(results['sft'][0]['steps'])} timed steps a run, {args.repeats} runs a side"
    )
    memory = "peak CUDA memory" if args.device == "cuda" else "peak RSS growth"
    print(f"{'side':<10} {'median step':>12} {'vs SFT':>7} {memory + ' (max of runs)':>30} {'before step 1':>14}")
    medians = {side: float(np.median(sum((r["steps"] for r in runs), []))) for side, runs in results.items()}
    for side, runs in results.items():
        mem = max(r["cuda_peak"] if args.device == "cuda" else r["rss_growth"] for r in runs) / 2**20
        before = np.median([r["before_first_step"] for r in runs])
        ratio = medians[side] / medians["sft"]
        print(f"{side:<10} {medians[side] * 1e3:>9.1f} ms {ratio:>6.3f}x {mem:>25.1f} MiB {before:>12.2f} s")
    if args.json:
        peaks = {side: max(r["cuda_peak"] or r["rss_growth"] for r in runs) for side, runs in results.items()}
        figures = {side: {"step_s": medians[side], "tokens_per_s": positions / medians[side]} for side in SIDES}
        for side in SIDES:
            figures[side]["peak_gib"] = peaks[side] / 2**30
        Path(args.json).write_text(json.dumps({"device": device, "precision": args.precision, **figures}, indent=1))
    print(
        f"ratio DPO live / SFT: {medians['dpo-live'] / medians['sft']:.3f}; "
        f"DPO precomputed / SFT: {medians['dpo-pre'] / medians['sft']:.3f}"
    )


if __name__ == "__main__":
    main()
