"""`lightning-gpt serve` under load: requests/s and time to first token at 1, 4 and 16 concurrent clients.

    python benchmarks/serve.py                        # CPU: tiny preset, random weights, 32 new tokens a request
    python benchmarks/serve.py --requests 64 --new-tokens 64

It writes a tiny random chat checkpoint, starts the server (`python -m lightning_gpt serve`) itself, and sends
streamed greedy chat requests with the openai client from N threads, each request a different prompt. Time to
first token is from sending the request to its first content chunk (median and 90th percentile); requests/s is
the requests of one level over its wall time. The last line is the ratio of requests/s at 16 clients to 1 client:
the server generates for one request at a time, so it measures what queueing costs or saves, not batching.
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


def start_server(ckpt: Path, log: Path) -> tuple[subprocess.Popen, openai.OpenAI]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "lightning_gpt", "serve", "--ckpt_path", str(ckpt), "--port", str(port)]
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
        "ttft_p90": ttft[min(len(ttft) - 1, int(0.9 * len(ttft)))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "bench.ckpt"
        write_checkpoint(ckpt, args.preset, args.block_size)
        proc, client = start_server(ckpt, Path(tmp) / "server.log")
        try:
            level(client, 2, 4, args.new_tokens)  # warm-up
            rows = [level(client, c, args.requests, args.new_tokens) for c in args.clients]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"preset {args.preset}, {args.requests} streamed greedy chat requests a level, {args.new_tokens} new tokens")
    print("| clients | requests/s | tokens/s | TTFT p50 (ms) | TTFT p90 (ms) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['req_s']:.2f} | {r['tok_s']:.0f} | {1000 * r['ttft_p50']:.0f} | "
            f"{1000 * r['ttft_p90']:.0f} |"
        )
    by_clients = {r["clients"]: r["req_s"] for r in rows}
    if 1 in by_clients and 16 in by_clients:
        print(f"ratio requests/s at 16 clients / 1 client: {by_clients[16] / by_clients[1]:.2f}")


if __name__ == "__main__":
    main()
