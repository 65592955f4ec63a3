"""The GPU benchmark suite: one command that measures the training, alignment and decoding paths on this machine's
GPU and writes the table to docs/benchmarks.md with the device's name.

    bash benchmarks/gpu_suite.sh                      # a CUDA GPU: gpt2-124m, bf16, compiled; about 10 minutes
    bash benchmarks/gpu_suite.sh --dry-run            # any machine: every stage for a few steps on the CPU, tiny

Stages (each one of the benchmarks in this folder, in its own process, its figures read from its --json file; a dry
run runs them all, sides included, in the suite's process, as its figures mean nothing):
  pretrain  benchmarks/throughput.py on configs/pretrain_wikitext103.yaml at micro-batches 16, 32 and 64, the
            accumulation set so that every optimizer step keeps the recipe's 64 windows: tokens/s, MFU, peak memory,
            host syncs per step, ratio to a plain PyTorch loop; the best micro-batch is marked; and the fast recipe
            (configs/pretrain_wikitext103_fast.yaml) at micro-batch 32
  sft       the same on configs/sft_ultrachat.yaml (real tokens only, padding not counted)
  dpo       benchmarks/dpo_step.py: DPO steps with the reference live and precomputed, against SFT
  decode    benchmarks/generate.py: tokens/s with and without the KV cache
  logits    benchmarks/loss_memory.py: peak memory of the LM head's loss on whole logits vs in chunks

Data: a real run reads WikiText-103 and UltraChat-200k from the Hugging Face hub, or from --data DIR (a folder of
datasets in the hub's layout: DIR/Salesforce/wikitext, DIR/HuggingFaceH4/ultrachat_200k), which a GPU machine
without the hub needs; a dry run reads the built-in sample (lightning_gpt/sample_data/) unless given --data. The
WikiText-103 wall-clock to the target loss is not run (the full corpus is not on the GPU machine); the table estimates
it for both recipes from the measured tokens/s and each recipe's tokens (the fast one's from the CPU ablation), and
says so.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
DOCS = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- gpu-suite:begin -->", "<!-- gpu-suite:end -->"
RECIPE_TOKENS = 12_000 * 64 * 1024  # configs/pretrain_wikitext103.yaml: max_steps x windows per step x block size
# The fast recipe (configs/pretrain_wikitext103_fast.yaml) reached the current recipe's final loss in this share of
# its steps in benchmarks/learning_speed.py on the CPU (4 x 128, 150 steps, 3 seeds; docs/benchmarks.md): measured
# there, assumed here at gpt2-124m.
FAST_STEP_SHARE = 0.31
FAST = REPO / "configs" / "pretrain_wikitext103_fast.yaml"
# The stages whose script runs each of its sides in a process of its own, unless told --in-process.
IN_PROCESS_SIDES = ("dpo", "logits")


DATASETS = {"pretrain": "Salesforce/wikitext", "sft": "HuggingFaceH4/ultrachat_200k"}  # hub ids
SAMPLE_ROOT = REPO / "lightning_gpt" / "sample_data"  # the built-in sample, in the hub's layout


def data_paths(args) -> dict[str, str]:
    """What the pretraining and SFT stages read: --data DIR (hub layout), else in a dry run the built-in sample,
    else the hub."""
    if args.data_root:
        return {stage: str(Path(args.data_root) / hub_id) for stage, hub_id in DATASETS.items()}
    if args.dry_run:
        return {stage: str(SAMPLE_ROOT / hub_id) for stage, hub_id in DATASETS.items()}
    return dict(DATASETS)


def stage_commands(args) -> dict[str, list[str]]:
    """Each stage's benchmark command line (without --json), sized for a GPU or, with --dry-run, for a CPU check."""
    data = data_paths(args)
    pretrain = ["throughput.py", "--config", str(REPO / "configs/pretrain_wikitext103.yaml")]
    pretrain += ["--data-path", data["pretrain"]]
    sft = ["throughput.py", "--config", str(REPO / "configs/sft_ultrachat.yaml")]
    sft += ["--data-path", data["sft"]]
    if args.dry_run:
        tiny = ["--preset", "tiny", "--block-size", "64", "--steps", "2", "--warmup", "1", "--repeats", "1"]
        tiny += ["--num-workers", "0"]
        return {
            "pretrain mb4": [*pretrain, *tiny, "--batch-size", "4", "--accumulate", "2"],
            "pretrain fast mb4": [*pretrain, "--overlay", str(FAST), *tiny, "--batch-size", "4", "--accumulate", "2"],
            "sft": [*sft, *tiny, "--batch-size", "4", "--accumulate", "2"],
            "dpo": ["dpo_step.py", "--block-size", "64", "--steps", "2", "--warmup", "1", "--repeats", "1"],
            "decode": [
                "generate.py",
                "--preset",
                "tiny",
                "--prompt-tokens",
                "8",
                "--new-tokens",
                "8",
                "--repeats",
                "1",
            ],
            "logits": ["loss_memory.py", "--block-size", "64", "--batch-size", "4", "--steps", "1"],
        }
    gpu = ["--gpu", "--preset", "gpt2-124m", "--block-size", "1024", "--steps", "40", "--warmup", "15"]
    commands = {
        f"pretrain mb{mb}": [*pretrain, *gpu, "--batch-size", str(mb), "--accumulate", str(64 // mb)]
        for mb in (16, 32, 64)
    }
    fast = [*pretrain, "--overlay", str(FAST), *gpu]
    commands["pretrain fast mb32"] = [*fast, "--batch-size", "32", "--accumulate", "2"]
    commands["sft"] = [*sft, *gpu, "--batch-size", "16", "--accumulate", "2"]
    dpo = ["--preset", "gpt2-124m", "--block-size", "1024", "--batch-size", "8", "--precision", "bf16-mixed"]
    commands["dpo"] = ["dpo_step.py", *dpo, "--steps", "30", "--warmup", "8", "--repeats", "2"]
    commands["decode"] = ["generate.py", "--preset", "gpt2-124m", "--new-tokens", "256"]
    commands["logits"] = ["loss_memory.py", "--preset", "gpt2-124m", "--batch-size", "16", "--precision", "bf16-mixed"]
    return commands


def run_stage(name: str, command: list[str], workdir: Path) -> dict | None:
    """One stage in a process of its own (a GPU run: each stage's memory and compiled graphs are its own)."""
    out = workdir / f"{name.replace(' ', '_')}.json"
    print(f"== {name}: python benchmarks/{' '.join(command)}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, *command, "--json", str(out)], cwd=BENCHMARKS, env=env)
    return stage_result(name, done.returncode, out)


def run_stage_here(name: str, command: list[str], workdir: Path) -> dict | None:
    """One stage in this process, as `python benchmarks/SCRIPT ARGS` would run it (a dry run: its figures mean
    nothing, so the ten processes' start-up, about 8 s each on 2 cores, is not worth paying)."""
    out = workdir / f"{name.replace(' ', '_')}.json"
    print(f"== {name}: python benchmarks/{' '.join(command)} (in the suite's process)", flush=True)
    script, argv = str(BENCHMARKS / command[0]), sys.argv
    sys.argv = [script, *command[1:], "--json", str(out)]
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except Exception:  # noqa: BLE001 - a broken stage is reported and the others still run, as in their own process
        traceback.print_exc()
        code = 1
    finally:
        sys.argv = argv
    return stage_result(name, code, out)


def stage_result(name: str, code: int, out: Path) -> dict | None:
    print(f"== {name}: done", flush=True)
    if code or not out.is_file():
        print(f"== {name}: failed (exit {code})", flush=True)
        return None
    return json.loads(out.read_text())


def _gib(value) -> str:
    return f"{value:.1f} GiB" if value else "n/a"


def table(results: dict[str, dict | None], device: str, dry_run: bool) -> str:
    lines = [f"Device: **{device}**" + (" (dry run: tiny model on the CPU, figures meaningless)" if dry_run else "")]
    lines += ["", "| stage | tokens/s | MFU | peak memory | vs plain PyTorch | host syncs/step | notes |"]
    lines += ["|---|---|---|---|---|---|---|"]
    trained = {k: v for k, v in results.items() if k.startswith(("pretrain", "sft")) and v}
    current = [k for k in trained if k.startswith("pretrain mb")]  # the current recipe's micro-batches
    best = max(current, key=lambda k: trained[k]["lightning_tokens_per_s"], default=None)
    fast = next((k for k in trained if k.startswith("pretrain fast")), None)
    for name, r in trained.items():
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "n/a"
        syncs = r.get("syncs_per_batch_max_between_logs", "n/a")
        note = f"micro-batch {r['micro_batch']} x {r['accumulate']}, {r['precision']}"
        note += " (best)" if name == best else ""
        lines.append(f"| {name} | {r['lightning_tokens_per_s']:,.0f} | {mfu} | {_gib(r.get('peak_gib'))} | "
                     f"{r['ratio']:.3f} | {syncs} | {note} |")  # fmt: skip
    if results.get("dpo"):
        for side in ("dpo-live", "dpo-pre", "sft"):
            r = results["dpo"][side]
            label = {
                "dpo-live": "dpo (reference live)",
                "dpo-pre": "dpo (reference precomputed)",
                "sft": "sft same pairs",
            }
            lines.append(f"| {label[side]} | {r['tokens_per_s']:,.0f} | | {_gib(r['peak_gib'])} | | | "
                         f"step {r['step_s'] * 1e3:.0f} ms |")  # fmt: skip
    if results.get("decode"):
        r = results["decode"]
        lines.append(f"| decode, KV cache | {r['cached_tokens_per_s']:,.0f} | | {_gib(r['peak_gib'])} | | | batch 1 |")
        lines.append(f"| decode, no cache | {r['uncached_tokens_per_s']:,.0f} | | | | | batch 1 |")
    if results.get("logits"):
        r = results["logits"]
        lines.append(f"| LM-head loss, whole logits | | | {_gib(r['whole']['peak'] / 2**30)} | | | training step |")
        lines.append(f"| LM-head loss, chunked | | | {_gib(r['chunked']['peak'] / 2**30)} | | | training step |")
    failed = [name for name, r in results.items() if r is None]
    if failed:
        lines += ["", f"Failed stages: {', '.join(failed)} (see the suite's output)."]
    if best:
        lines += ["", *time_to_target(trained[best], trained.get(fast))]
    return "\n".join(lines)


def time_to_target(current: dict, fast: dict | None) -> list[str]:
    """The estimated training time to WikiText-103's validation loss 3.39 (the seed's figure) of each recipe: its
    tokens over its measured tokens/s. Not run: the full corpus is not on the GPU machine."""
    hours = RECIPE_TOKENS / current["lightning_tokens_per_s"] / 3600
    lines = [
        f"Estimated wall-clock to validation loss 3.39 on WikiText-103, not counting validation (tokens / measured "
        f"tokens/s, not run: the full corpus is not on this machine): the current recipe, {RECIPE_TOKENS / 1e6:,.0f}M "
        f"tokens at its best micro-batch, {hours:.2f} h."
    ]
    if fast:
        tokens = RECIPE_TOKENS * FAST_STEP_SHARE
        fast_hours = tokens / fast["lightning_tokens_per_s"] / 3600
        lines.append(
            f"The fast recipe (Muon, QK-norm, ReLU squared), {tokens / 1e6:,.0f}M tokens ({FAST_STEP_SHARE:.0%} of the "
            f"steps, as in the CPU ablation of benchmarks/learning_speed.py), {fast_hours:.2f} h "
            f"({fast_hours / hours:.2f}x the current recipe's)."
        )
    return lines


def write_docs(text: str, command: str) -> None:
    """Replaces the suite's section of docs/benchmarks.md (or appends it), atomically."""
    section = f"{BEGIN}\n## GPU suite\n\nCommand: `{command}`\n\n{text}\n{END}"
    current = DOCS.read_text(encoding="utf-8") if DOCS.is_file() else "# Benchmarks\n"
    if BEGIN in current and END in current:
        new = current[: current.index(BEGIN)] + section + current[current.index(END) + len(END) :]
    else:
        new = current.rstrip("\n") + "\n\n" + section + "\n"
    tmp = DOCS.with_name(DOCS.name + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, DOCS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every stage for a few steps on the CPU")
    parser.add_argument(
        "--data",
        "--data-root",
        dest="data_root",
        help="a folder of hub-layout datasets (DIR/Salesforce/wikitext, ...); default: the hub, or in a dry run the "
        "built-in sample",
    )
    parser.add_argument("--out", help="also write the table to this file (a dry run writes nothing else)")
    args = parser.parse_args()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: run it on a GPU machine, or check it with --dry-run")
    device = torch.cuda.get_device_name() if not args.dry_run else "CPU"
    commands = stage_commands(args)
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as work:
        if args.dry_run:  # every stage in this process, with its sides in-process too (see run_stage_here)
            sys.path.insert(0, str(BENCHMARKS))  # the scripts import benchmarks/timing.py as run from this folder
            run = run_stage_here
            commands = {name: [*command, "--in-process"] if name in IN_PROCESS_SIDES else command
                        for name, command in commands.items()}  # fmt: skip
        else:
            run = run_stage
        results = {name: run(name, command, Path(work)) for name, command in commands.items()}
    text = table(results, device, args.dry_run)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    if not args.dry_run:
        write_docs(text, "bash benchmarks/gpu_suite.sh")
        print(f"written to {DOCS}")
    if any(r is None for r in results.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
