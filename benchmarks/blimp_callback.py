"""What `callbacks.BlimpAccuracy` costs: its scoring time per validation against the training time between two
validations, measured on this machine, and extrapolated to the pretraining config by FLOPs.

    python benchmarks/blimp_callback.py --data ../shared/data/hub/nyu-mll/blimp      # smoke size (configs/smoke.yaml)

Measured: the seconds of one optimizer step of the smoke config (tiny, 8 x 128 tokens, fp32, AdamW; random tokens,
the step's cost does not depend on them) and of one BLiMP scoring (`--limit` pairs of each paradigm of the copy).
The smoke config validates every 20 steps. The pretraining config validates every 500 optimizer steps of 64 x 1,024
tokens and would score 67 paradigms from the hub: its share is that scoring's forward FLOPs (2 x parameters per
token) over the interval's training FLOPs (the model's flops_per_token), times the ratio of training's FLOP rate to
scoring's measured here (short padded sequences use the hardware less well than training's full windows). The last
line is the smoke share and the extrapolated share.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lightning_gpt.evaluation.blimp import encode_paradigms, read_paradigms, score_blimp
from lightning_gpt.model import GPT, GPTConfig
from lightning_gpt.tokenizer import Tokenizer

ALL_PARADIGMS = 67


def step_seconds(model: GPT, batch: int, length: int, steps: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    idx = torch.randint(0, model.config.vocab_size, (batch, length + 1))
    times = []
    for _ in range(steps + 2):  # the first two warm up
        start = time.perf_counter()
        loss = model(idx[:, :-1], idx[:, 1:]) / (batch * length)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return sorted(times[2:])[len(times[2:]) // 2]  # the median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/hub/nyu-mll/blimp")
    parser.add_argument("--limit", type=int, default=50, help="pairs per paradigm (the callback's default)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--interval", type=int, default=20, help="optimizer steps between validations (smoke.yaml)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", block_size=128, vocab_size=50257))
    train_step = step_seconds(model.train(), 8, 128, args.steps)
    encoded = encode_paradigms(Tokenizer(), read_paradigms(args.data, args.limit, "--data"))
    model.eval()
    score_blimp(model, encoded)  # warm-up
    start = time.perf_counter()
    score_blimp(model, encoded)
    scoring = time.perf_counter() - start
    tokens = sum(len(c) + len(t) for c, t in encoded.requests)  # positions run through the model
    train_rate = model.flops_per_token(128) * 8 * 128 / train_step  # FLOP/s
    score_rate = 2 * model.num_parameters() * tokens / scoring
    big = GPT(GPTConfig.from_preset("gpt2-124m", vocab_size=50257))
    pairs = sum(encoded.sizes)
    real_tokens = tokens / pairs * args.limit * ALL_PARADIGMS
    real_flops = 2 * big.num_parameters() * real_tokens / (500 * 64 * 1024 * big.flops_per_token(1024))
    figures = {
        "train_step_s": train_step,
        "blimp_s": scoring,
        "pairs": pairs,
        "positions": tokens,
        "smoke_share": scoring / (scoring + args.interval * train_step),
        "train_over_score_flop_rate": train_rate / score_rate,
        "real_flop_share": real_flops,
        "real_share": real_flops * train_rate / score_rate,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    print(f"smoke: {figures['smoke_share']:.1%} of the run; pretraining config: {figures['real_share']:.2%}")


if __name__ == "__main__":
    main()
