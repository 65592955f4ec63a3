"""How fast each recipe learns, side by side: the validation loss at a fixed token budget (mean and spread over
seeds), the steps each needs to reach the current recipe's final loss, and the time per step; for the current
recipe and each candidate, on the same tokens in the same order, and optionally nanoGPT's model at the same shape.

    python benchmarks/learning_speed.py                            # CPU: the current recipe and every candidate
    python benchmarks/learning_speed.py --candidates current muon "fast=muon,qk_norm,muon_learning_rate=0.04"
    python benchmarks/learning_speed.py --nanogpt ../nanoGPT        # adds nanoGPT (a checkout: its model.py)
    python benchmarks/learning_speed.py --device cuda --n-layer 12 --n-head 12 --n-embd 768 --block-size 1024 \\
        --batch-size 16 --steps 1000 --eval-every 100 --compile    # one GPU: gpt2-124m's shape

Candidates. `current` is the recipe of configs/pretrain_wikitext103.yaml before the Muon work (AdamW 6e-4, weight
decay 0.1, betas (0.9, 0.95), the cosine to a tenth, the Llama-shaped block); each other candidate is `current`
with settings changed (CANDIDATES below), and `NAME=A,B,key=value,...` composes named candidates and settings (a
value is read as YAML). Every candidate runs the same shape, the same warmup (--warmup-steps, scaled down from the
config's 500 of 12,000 steps), gradient clipping at 1.0 as the configs, dropout 0 (the budget is under two passes
over the data, where dropout only slows learning; nanoGPT's default too) and no accumulation.

Data. The shared WikiText-103 mirror (../shared/data/hub/Salesforce/wikitext: the head of train and the whole
validation split), GPT-2 tokens through the project's own WikiText103 DataModule. The mirror's train head is only
64k tokens, so training reads it followed by the first 80% of the validation split's tokens (about 260k in all);
the last 20% of the validation split are held out (about 49k tokens, articles the training never sees). Seed s
draws the order of the training windows (each epoch reshuffled) and the initial weights: every candidate gets the
same windows in the same order at a given seed. The curve is the loss on the first --eval-windows held-out windows
every --eval-every steps; the loss at the budget is on every held-out window.

What it prints, per candidate: the held-out loss at the budget (mean ± sample standard deviation over seeds, and
the range), its difference from `current` paired by seed (mean ± standard deviation), the first step at which the
seed-mean curve reaches `current`'s final curve loss (interpolated between evaluations), and the time per step.
The learning runs go --jobs at a time with --threads each (so their own times are not comparable); the time per
step is measured afterwards in this process, every candidate in turn, one step each, --time-rounds times, and its
median and interquartile range are printed. The last line: each candidate's steps to `current`'s loss over
`current`'s steps, and its time per step over `current`'s.

--results DIR keeps each finished run (a JSON file named by its settings, seed, data and budget) and reads it back
instead of running it again: the same settings, seed and data give the same losses on one machine.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = REPO.parent / "shared/data/hub/Salesforce/wikitext"
HELD_OUT = 0.2  # the share of the validation split's tokens held out of training

# The recipe of configs/pretrain_wikitext103.yaml before the Muon work: the baseline every candidate is measured
# against, fixed here so that it stays the same whatever the config becomes.
CURRENT = {"optimizer": "adamw", "learning_rate": 6e-4, "min_lr_ratio": 0.1, "weight_decay": 0.1, "betas": (0.9, 0.95)}
CANDIDATES = {
    "current": {},
    "muon": {"optimizer": "muon"},
    "qk_norm": {"qk_norm": True},
    "relu2": {"mlp": "relu2"},
    "zero_init": {"zero_init_proj": True},
    "softcap": {"logit_softcap": 15.0},
    "shortcut": {"embed_shortcut": True},
}


def parse_candidate(spec: str) -> tuple[str, dict]:
    """`NAME` (one of CANDIDATES) or `NAME=A,B,key=value,...`: named candidates and settings over `current`."""
    import yaml

    if "=" not in spec:
        if spec not in CANDIDATES:
            raise SystemExit(f"unknown candidate {spec!r}: one of {sorted(CANDIDATES)} or NAME=A,key=value,...")
        return spec, dict(CANDIDATES[spec])
    name, parts = spec.split("=", 1)
    settings: dict = {}
    for part in parts.split(","):
        if "=" in part:
            key, value = part.split("=", 1)
            settings[key] = yaml.safe_load(value)
        elif part in CANDIDATES:
            settings.update(CANDIDATES[part])
        else:
            raise SystemExit(f"candidate {name}: {part!r} is neither a candidate nor key=value")
    return name, settings


# --- data ---------------------------------------------------------------------------------------------------------


def load_tokens(data: str, tokenizer: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(training tokens, held-out tokens, vocabulary size) of the mirror, the tokens as int64 arrays (see the
    module's docstring). A trained tokenizer (bpe-N) learns from the mirror's train split only."""
    from data_modules import WikiText103

    dm = WikiText103(path=data, tokenizer=tokenizer, block_size=256, batch_size=1, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    train, val = np.asarray(dm.tokens("train"), dtype=np.int64), np.asarray(dm.tokens("val"), dtype=np.int64)
    cut = int(len(val) * (1 - HELD_OUT))
    return np.concatenate([train, val[:cut]]), val[cut:], dm.vocab_size


def windows(tokens: np.ndarray, length: int) -> np.ndarray:
    """Non-overlapping windows of length + 1 tokens (inputs and the targets one further), (n, length + 1)."""
    n = (len(tokens) - 1) // length
    starts = np.arange(n) * length
    return np.stack([tokens[s : s + length + 1] for s in starts])


def inputs_targets(rows):
    """(B, T + 1) windows -> inputs (B, T) and targets (B, T), each contiguous (nanoGPT views them)."""
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def batch_order(n_windows: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
    """(steps, batch_size) window indices: each pass over the windows in a new order drawn from `seed`."""
    rng = np.random.default_rng(seed)
    needed = steps * batch_size
    order = np.concatenate([rng.permutation(n_windows) for _ in range(math.ceil(needed / n_windows))])
    return order[:needed].reshape(steps, batch_size)


# --- one run ------------------------------------------------------------------------------------------------------


def build(kind: str, settings: dict, args, seed: int):
    """(model, optimizer, schedule, loss_fn) for our GPT with `settings`, or nanoGPT's at the same shape.
    loss_fn(x, y) is the mean cross-entropy of a batch."""
    import torch

    torch.manual_seed(seed)
    device = torch.device(args.device)
    if kind == "nanogpt":
        return build_nanogpt(args, device)
    from lightning_gpt.training import GPTModule

    shape = {"n_layer": args.n_layer, "n_head": args.n_head, "n_embd": args.n_embd}
    module = GPTModule(preset="tiny", vocab_size=args.vocab_size, block_size=args.block_size, dropout=0.0, **shape,
                       warmup_steps=args.warmup_steps, **{**CURRENT, **settings}).to(device)  # fmt: skip
    optimizer, schedule = module.build_optimizer(total_steps=args.steps)
    model = module.model
    if args.compile:
        model.compile()

    def loss_fn(x, y):
        return model(x, y) / y.numel()

    return module, optimizer, schedule, loss_fn


def build_nanogpt(args, device):
    """nanoGPT's model.py from the checkout at --nanogpt, its own optimizer groups (configure_optimizers) and
    train.py's defaults: AdamW 6e-4, weight decay 0.1, betas (0.9, 0.95), no bias, dropout 0, the same warmup and
    cosine to a tenth."""
    import torch
    from torch.optim.lr_scheduler import LambdaLR

    spec = importlib.util.spec_from_file_location("nanogpt_model", Path(args.nanogpt) / "model.py")
    nano = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nano)
    padded = 64 * math.ceil(args.vocab_size / 64)  # nanoGPT's 50,304 for GPT-2's vocabulary
    config = nano.GPTConfig(block_size=args.block_size, vocab_size=padded, n_layer=args.n_layer, n_head=args.n_head,
                            n_embd=args.n_embd, dropout=0.0, bias=False)  # fmt: skip
    model = nano.GPT(config).to(device)
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device.type)
    from lightning_gpt.training.optim import warmup_cosine

    schedule = LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup_steps=args.warmup_steps,
                                                              total_steps=args.steps, min_lr_ratio=0.1))  # fmt: skip
    forward = torch.compile(model) if args.compile else model

    def loss_fn(x, y):
        return forward(x, y)[1]

    return model, optimizer, schedule, loss_fn


def train_step(parts, x, y) -> float:
    import torch

    model, optimizer, schedule, loss_fn = parts
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        loss = loss_fn(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    schedule.step()
    return loss.detach()


def evaluate(parts, held_out, batch_size: int, device) -> float:
    """Mean cross-entropy over the windows `held_out` (n, T + 1), in batches."""
    import torch

    model, _, _, loss_fn = parts
    model.eval()
    total = 0.0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for start in range(0, len(held_out), batch_size):
            rows = torch.from_numpy(held_out[start : start + batch_size]).to(device)
            total += float(loss_fn(*inputs_targets(rows))) * len(rows)
    model.train()
    return total / len(held_out)


def one_run(job: dict) -> dict:
    """Trains one candidate at one seed; returns its curve and its loss at the budget."""
    import torch

    args, kind, settings, seed = job["args"], job["kind"], job["settings"], job["seed"]
    torch.set_num_threads(args.threads)
    train, held_out = job["data"]
    device = torch.device(args.device)
    parts = build(kind, settings, args, seed)
    order = batch_order(len(train), args.steps, args.batch_size, seed)
    curve_windows = held_out[: args.eval_windows]
    curve, losses, started = {}, [], time.perf_counter()
    for step in range(args.steps):
        rows = torch.from_numpy(train[order[step]]).to(device)
        losses.append(train_step(parts, *inputs_targets(rows)))
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            curve[step + 1] = evaluate(parts, curve_windows, args.batch_size, device)
    seconds = time.perf_counter() - started
    final = evaluate(parts, held_out, args.batch_size, device)
    return {"curve": curve, "final": final, "train_losses": [float(v) for v in losses], "seconds": seconds}


def run_key(kind: str, settings: dict, seed: int, args, data_id: str) -> str:
    fields = {"kind": kind, "settings": settings, "seed": seed, "data": data_id, "steps": args.steps,
              "vocab": args.vocab_size,
              "batch": args.batch_size, "block": args.block_size, "shape": [args.n_layer, args.n_head, args.n_embd],
              "warmup": args.warmup_steps, "eval": [args.eval_every, args.eval_windows], "device": args.device,
              "current": CURRENT}  # fmt: skip
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- time per step, every candidate in turn -------------------------------------------------------------------------


def time_steps(candidates: dict[str, tuple[str, dict]], train: np.ndarray, args) -> dict[str, list[float]]:
    """Seconds of each candidate's training steps, measured round-robin (one step each, --time-rounds times) in this
    process with the machine's threads, after --time-warmup untimed steps each (compilation included)."""
    import torch

    device = torch.device(args.device)
    order = batch_order(len(train), args.time_rounds + args.time_warmup, args.batch_size, 0)
    built = {name: build(kind, settings, args, 0) for name, (kind, settings) in candidates.items()}
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for step in range(args.time_warmup + args.time_rounds):
        rows = torch.from_numpy(train[order[step]]).to(device)
        for name, parts in built.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            float(train_step(parts, *inputs_targets(rows)))  # waits for the step
            if step >= args.time_warmup:
                times[name].append(time.perf_counter() - started)
    return times


# --- the table ----------------------------------------------------------------------------------------------------


def steps_to(curve: dict[int, float], target: float) -> float | None:
    """The first step at which `curve` (step -> loss) is at or below `target`, linearly interpolated."""
    points = sorted(curve.items())
    previous = None
    for step, loss in points:
        if loss <= target:
            if previous is None:
                return float(step)
            (s0, l0) = previous
            return s0 + (step - s0) * (l0 - target) / (l0 - loss)
        previous = (step, loss)
    return None


def summarize(runs: dict[str, list[dict]], times: dict[str, list[float]], args) -> tuple[str, dict]:
    names = list(runs)
    base = "current" if "current" in runs else names[0]
    mean_curve = {
        name: {step: statistics.fmean(r["curve"][step] for r in rs) for step in rs[0]["curve"]}
        for name, rs in runs.items()
    }
    target = mean_curve[base][max(mean_curve[base])]
    base_time = statistics.median(times[base]) if times.get(base) else None
    rows, figures = [], {}
    for name in names:
        finals = [r["final"] for r in runs[name]]
        paired = [f - b["final"] for f, b in zip(finals, runs[base], strict=True)]
        reach = steps_to(mean_curve[name], target)
        t = sorted(times.get(name, []))
        med = statistics.median(t) if t else None
        iqr = (t[len(t) // 4], t[(3 * len(t)) // 4]) if t else None
        figures[name] = {
            "final_mean": statistics.fmean(finals),
            "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "finals": finals,
            "paired_diff_mean": statistics.fmean(paired),
            "paired_diff_std": statistics.stdev(paired) if len(paired) > 1 else 0.0,
            "steps_to_target": reach,
            "step_s_median": med,
            "step_s_iqr": iqr,
            "mean_curve": mean_curve[name],
        }
        f = figures[name]
        reach_text = f"{reach:.0f} ({reach / args.steps:.0%})" if reach is not None else "not reached"
        time_text = f"{med:.2f} [{iqr[0]:.2f}-{iqr[1]:.2f}]" if med else "n/a"
        ratio = f"{med / base_time:.3f}" if med and base_time else "n/a"
        rows.append(
            f"| {name} | {f['final_mean']:.3f} ± {f['final_std']:.3f} ({min(finals):.3f}-{max(finals):.3f}) | "
            f"{f['paired_diff_mean']:+.3f} ± {f['paired_diff_std']:.3f} | {reach_text} | {time_text} | {ratio} |"
        )
    header = [
        f"Held-out loss after {args.steps} steps of {args.batch_size} x {args.block_size} tokens "
        f"({args.steps * args.batch_size * args.block_size:,} tokens), {len(runs[base])} seeds; target: "
        f"{base}'s final curve loss {target:.3f}.",
        "",
        "| candidate | loss at budget (mean ± sd, range) | vs current, paired | steps to target | s/step median "
        "[IQR] | time ratio |",
        "|---|---|---|---|---|---|",
    ]
    last = ", ".join(
        f"{name} {figures[name]['steps_to_target'] / args.steps:.2f} steps"
        + (f" {figures[name]['step_s_median'] / base_time:.3f} time" if base_time else "")
        for name in names
        if figures[name]["steps_to_target"] is not None
    )
    return "\n".join([*header, *rows, "", f"vs {base}: {last}"]), figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    parser.add_argument("--nanogpt", help="a nanoGPT checkout (its model.py): adds nanoGPT at the same shape")
    parser.add_argument("--data", default=str(WIKITEXT), help="the WikiText mirror (hub layout)")
    parser.add_argument("--tokenizer", default="gpt2", help="gpt2, or bpe-N trained on the mirror's train split")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-windows", type=int, default=32, help="held-out windows of the curve")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (runs and timing)")
    parser.add_argument("--jobs", type=int, default=2, help="learning runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each learning run")
    parser.add_argument("--time-rounds", type=int, default=8, help="timed steps of each candidate (0: no timing)")
    parser.add_argument("--time-warmup", type=int, default=2)
    parser.add_argument("--results", help="a folder that keeps finished runs and reuses them")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()

    candidates = dict(parse_candidate(spec) for spec in args.candidates)
    jobs_of = {name: ("ours", settings) for name, settings in candidates.items()}
    if args.nanogpt:
        jobs_of["nanogpt"] = ("nanogpt", {})
    train, held_out_tokens, args.vocab_size = load_tokens(args.data, args.tokenizer)
    train_w, held_out = windows(train, args.block_size), windows(held_out_tokens, args.block_size)
    data_id = hashlib.sha256(train.tobytes() + held_out_tokens.tobytes()).hexdigest()[:16]
    print(f"training windows {len(train_w)} ({len(train):,} tokens), held out {len(held_out)} "
          f"({len(held_out_tokens):,} tokens)", flush=True)  # fmt: skip

    results_dir = Path(args.results) if args.results else None
    runs: dict[str, list[dict | None]] = {name: [None] * args.seeds for name in jobs_of}
    pending = []
    for seed in range(args.seeds):  # seed by seed: a run stopped early has every candidate at the first seeds
        for name, (kind, settings) in jobs_of.items():
            file = results_dir / f"{run_key(kind, settings, seed, args, data_id)}.json" if results_dir else None
            if file is not None and file.is_file():
                runs[name][seed] = json.loads(file.read_text())
                runs[name][seed]["curve"] = {int(k): v for k, v in runs[name][seed]["curve"].items()}
            else:
                pending.append((name, seed, file, {"args": args, "kind": kind, "settings": settings, "seed": seed,
                                                   "data": (train_w, held_out)}))  # fmt: skip
    print(f"{len(pending)} runs to do, {sum(s is not None for r in runs.values() for s in r)} read back", flush=True)
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [(name, seed, file, pool.submit(one_run, job)) for name, seed, file, job in pending]
        for name, seed, file, future in futures:
            result = future.result()
            runs[name][seed] = result
            print(f"  {name} seed {seed}: final {result['final']:.4f} ({result['seconds']:.0f} s)", flush=True)
            if file is not None:
                file.parent.mkdir(parents=True, exist_ok=True)
                file.write_text(json.dumps({**result, "name": name, "settings": jobs_of[name][1], "seed": seed}))

    times = time_steps(jobs_of, train_w, args) if args.time_rounds else {}
    text, figures = summarize(runs, times, args)
    import torch

    machine = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {os.cpu_count()} cores"
    print(f"\nDevice: {machine}; torch {torch.__version__}; {'compiled' if args.compile else 'eager'}")
    print(text)
    if args.json:
        payload = {"args": {k: v for k, v in vars(args).items()}, "machine": machine, "figures": figures,
                   "settings": {name: s for name, (_, s) in jobs_of.items()}, "times": times}  # fmt: skip
        Path(args.json).write_text(json.dumps(payload, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
