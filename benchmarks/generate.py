"""Decode speed with and without the KV cache: same model, same prompt, greedy, in one run.

    python benchmarks/generate.py                          # CPU: `small` preset (30M), 64-token prompt, 128 new
    python benchmarks/generate.py --preset gpt2-124m --new-tokens 256

Without the cache every step re-runs the whole sequence; with it, only the new token. Both outputs are checked to
be identical. The last line is the ratio cached / uncached tokens/s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lightning_gpt.generate import SamplingSettings, generate
from lightning_gpt.model import GPT, GPTConfig


def timed(model: GPT, prompt: list[int], settings: SamplingSettings, use_cache: bool) -> tuple[list[int], float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = generate(model, [prompt], settings, use_cache=use_cache)[0]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, len(out) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset(args.preset, block_size=args.prompt_tokens + args.new_tokens)).to(device).eval()
    if device == "cuda":
        model = model.to(torch.bfloat16)
    prompt = torch.randint(0, 50257, (args.prompt_tokens,)).tolist()
    # stop_ids=() and greedy: both sides produce exactly new_tokens tokens.
    settings = SamplingSettings(max_new_tokens=args.new_tokens, temperature=0.0)
    timed(model, prompt, SamplingSettings(max_new_tokens=4, temperature=0.0), True)  # warm-up
    cached, uncached = [], []
    for _ in range(args.repeats):
        out_cached, speed = timed(model, prompt, settings, use_cache=True)
        cached.append(speed)
        out_uncached, speed = timed(model, prompt, settings, use_cache=False)
        uncached.append(speed)
        assert out_cached == out_uncached, "the KV cache changed the greedy output"
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; preset {args.preset}, prompt {args.prompt_tokens} tokens, {args.new_tokens} new, greedy")
    print(f"without KV cache: {max(uncached):.1f} tokens/s")
    print(f"with KV cache:    {max(cached):.1f} tokens/s")
    if args.json:
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
        figures = {"device": name, "cached_tokens_per_s": max(cached), "uncached_tokens_per_s": max(uncached)}
        Path(args.json).write_text(json.dumps({**figures, "peak_gib": peak}, indent=1))
    print(f"ratio cached / uncached: {max(cached) / max(uncached):.2f}")


if __name__ == "__main__":
    main()
