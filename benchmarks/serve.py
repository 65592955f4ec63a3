"""`lightning-gpt serve` under load: aggregate tokens/s and time to first token at 1, 4 and 16 concurrent clients, with
requests decoded one at a time (`--max_batch 1`, what the server did before continuous batching) and together
(`--max_batch 16`), for each preset, in one run.

    python benchmarks/serve.py                          # CPU: tiny and small presets, random weights, 32 new tokens
    python benchmarks/serve.py --presets small --requests 64

It writes a random chat checkpoint per preset, starts the server (`python -m lightning_gpt serve`) itself, and sends
streamed greedy chat requests with the openai client from N threads, each request a different prompt. Time to first
token is from sending the request to its first content chunk (median and 95th percentile); tokens/s is the completion
tokens of one level over its wall time. The last line is, with batching, tokens/s at 16 clients over 1 client.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import torch

from lightning_gpt.chat import chat_tokenizer
from lightning_gpt.training.language_model import GPTModule


def write_checkpoint(path: Path, preset: str, block_size: int) -> None:
    torch.manual_seed(0)
    module = GPTModule(preset=preset, vocab_size=chat_tokenizer().vocab_size, block_size=block_size)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)


def start_server(ckpt: Path, log: Path, max_batch: int) -> tuple[subprocess.Popen, openai.OpenAI]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "lightning_gpt", "serve", "--ckpt_path", str(ckpt), "--port", str(port),
           "--max_batch", str(max_batch), "--max_queue", "1024"]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()}")
        try:
            client.models.list()
            return proc, client
        except openai.APIConnectionError:
            time.sleep(0.2)
    raise SystemExit("the server did not start in 2 minutes")


def one_request(client: openai.OpenAI, i: int, new_tokens: int) -> tuple[float, int]:
    """(seconds to the first content chunk, completion tokens) of one streamed greedy request."""
    sent = time.perf_counter()
    first = None
    chunks = client.chat.completions.create(
        model="bench",
        messages=[{"role": "user", "content": f"Request {i}: tell me something about the number {i}."}],
        max_tokens=new_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    tokens = 0
    for chunk in chunks:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - sent
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return first if first is not None else float("nan"), tokens


def level(client: openai.OpenAI, clients: int, requests: int, new_tokens: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda i: one_request(client, i, new_tokens), range(requests)))
    wall = time.perf_counter() - start
    ttft = sorted(r[0] for r in results)
    return {
        "clients": clients,
        "req_s": requests / wall,
        "tok_s": sum(r[1] for r in results) / wall,
        "ttft_p50": statistics.median(ttft),
        "ttft_p95": ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    sides = {"one at a time (--max_batch 1)": 1, "batched (--max_batch 16)": 16}
    table, ratios = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            ckpt = Path(tmp) / f"{preset}.ckpt"
            write_checkpoint(ckpt, preset, args.block_size)
            for side, max_batch in sides.items():
                proc, client = start_server(ckpt, Path(tmp) / "server.log", max_batch)
                try:
                    level(client, 2, 4, args.new_tokens)  # warm-up
                    rows = [level(client, c, args.requests, args.new_tokens) for c in args.clients]
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
                table += [(preset, side, r) for r in rows]
                by_clients = {r["clients"]: r["tok_s"] for r in rows}
                if 1 in by_clients and 16 in by_clients:
                    ratios[(preset, side)] = by_clients[16] / by_clients[1]
    device = f"CPU, {torch.get_num_threads()} threads"
    print(f"{device}; {args.requests} streamed greedy chat requests a level, up to {args.new_tokens} new tokens each")
    print("| preset | decoding | clients | requests/s | tokens/s | TTFT p50 (ms) | TTFT p95 (ms) |")
    print("|---|---|---|---|---|---|---|")
    for preset, side, r in table:
        print(
            f"| {preset} | {side} | {r['clients']} | {r['req_s']:.2f} | {r['tok_s']:.0f} | "
            f"{1000 * r['ttft_p50']:.0f} | {1000 * r['ttft_p95']:.0f} |"
        )
    for (preset, side), ratio in ratios.items():
        print(f"{preset}, {side}: tokens/s at 16 clients / 1 client = {ratio:.2f}")
    batched = [ratio for (_, side), ratio in ratios.items() if side.startswith("batched")]
    if batched:
        print(f"batched, tokens/s at 16 clients / 1 client (lowest over presets): {min(batched):.2f}")


if __name__ == "__main__":
    main()
