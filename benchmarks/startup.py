"""Start-up time of a command that does not train (`lightning-gpt chat --help` by default): this tree against an
earlier revision, in one run, alternating sides so that a slow spell of the machine hits both.

    python benchmarks/startup.py [--base REV] [--repeats 5] [-- chat --help]

The earlier revision is checked out into a temporary git worktree and run from its own folder (`python -m
lightning_gpt ...` imports the package of the folder it runs in), with the same Python and packages. Prints each
side's median wall time, and last the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = "4e80670"  # main before the package was regrouped (issue 18): every command imported Lightning first


def timed(folder: Path, command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lightning_gpt", *command], cwd=folder, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=BASE, help="the earlier revision")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("command", nargs="*", default=["chat", "--help"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=REPO, check=True,
                       capture_output=True)  # fmt: skip
        try:
            sides = {f"base ({args.base})": base, "this tree": REPO}
            for folder in sides.values():
                timed(folder, args.command)  # warm the file cache of both sides first
            times: dict[str, list[float]] = {name: [] for name in sides}
            for _ in range(args.repeats):
                for name, folder in sides.items():
                    times[name].append(timed(folder, args.command))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, check=False)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"lightning-gpt {' '.join(args.command)}, {args.repeats} runs each, median wall time:")
    for name, value in medians.items():
        print(f"  {name}: {value:.2f} s  (runs: {', '.join(f'{v:.2f}' for v in times[name])})")
    base_name, this_name = list(medians)
    print(f"ratio base / this tree: {medians[base_name] / medians[this_name]:.1f}x")


if __name__ == "__main__":
    main()
