"""A real `lightning-gpt serve` process under the load and the faults of a network: many clients at once, clients that
hang up, bad requests, half-open connections, and a SIGTERM with requests in flight."""

import contextlib
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")

from lightning_gpt.chat import chat_stop_ids, chat_tokenizer, render_prompt  # noqa: E402
from lightning_gpt.generate import SamplingSettings, generate  # noqa: E402
from lightning_gpt.loading import load_checkpoint  # noqa: E402
from lightning_gpt.training import GPTModule  # noqa: E402
from tests.conftest import save_module  # noqa: E402

pytestmark = pytest.mark.slow
TOKENIZER = chat_tokenizer()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    module = GPTModule(preset="tiny", n_layer=1, n_embd=32, block_size=1024, vocab_size=TOKENIZER.vocab_size)
    return save_module(module, tmp_path_factory.mktemp("serve") / "chat.ckpt")


class Server:
    def __init__(self, ckpt: str, log: Path, *flags: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = log
        cmd = [sys.executable, "-m", "lightning_gpt", "serve", "--ckpt_path", ckpt, "--port", str(self.port), *flags]
        with open(log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, f"the server exited: {log.read_text()}"
            try:
                self.get("/v1/models", timeout=1)
                return
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 60):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        connection.request(method, path, body=json.dumps(body) if body is not None else None,
                           headers={"Content-Type": "application/json"})  # fmt: skip
        return connection, connection.getresponse()

    def get(self, path: str, timeout: float = 60) -> dict:
        connection, response = self.request("GET", path, timeout=timeout)
        with contextlib.closing(connection):
            return json.loads(response.read())

    def post(self, path: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
        connection, response = self.request("POST", path, body, timeout=timeout)
        with contextlib.closing(connection):
            return response.status, json.loads(response.read())

    def rss_kb(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


def chat(content: str, **fields) -> dict:
    return {"model": "chat", "messages": [{"role": "user", "content": content}], **fields}


def watch_models(server: Server, stop: threading.Event, worst: list[float]) -> None:
    """Asks for /v1/models every 0.2 s until `stop`, keeping the slowest answer's time (inf for none)."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            server.get("/v1/models", timeout=5)
            worst.append(time.monotonic() - started)
        except OSError:
            worst.append(float("inf"))
        time.sleep(0.2)


def test_a_load_of_clients_good_and_bad_each_gets_its_own_answer_while_the_server_stays_responsive(
    checkpoint, tmp_path
):
    server = Server(checkpoint, tmp_path / "log.txt", "--max_batch", "16", "--max_queue", "256")
    model, tokenizer = load_checkpoint(checkpoint, "cpu")
    stops = chat_stop_ids(tokenizer)

    def expected(i: int) -> str:
        prompt = render_prompt(tokenizer, [{"role": "user", "content": f"Client {i} asks a question."}])
        settings = SamplingSettings(max_new_tokens=8, temperature=0, stop_ids=stops)
        return tokenizer.decode(generate(model, [prompt], settings)[0])

    def client(i: int) -> list[str]:
        outcomes = []
        for turn in range(3):
            kind = (i + turn) % 4
            body = chat(f"Client {i} asks a question.", max_tokens=8, temperature=0)
            if kind == 0:  # plain
                status, reply = server.post("/v1/chat/completions", body)
                outcomes.append("ok" if reply["choices"][0]["message"]["content"] == expected(i) else f"wrong {i}")
            elif kind == 1:  # streamed
                connection, response = server.request("POST", "/v1/chat/completions", {**body, "stream": True})
                with contextlib.closing(connection):
                    events = [line[6:] for line in response.read().decode().split("\n\n") if line.startswith("data:")]
                text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]
                               if json.loads(e)["choices"])  # fmt: skip
                outcomes.append("ok" if events[-1] == "[DONE]" and text == expected(i) else f"wrong stream {i}")
            elif kind == 2:  # hangs up at once, streamed or not
                connection, _ = None, None
                raw = socket.create_connection(("127.0.0.1", server.port))
                payload = json.dumps({**body, "max_tokens": 500, "stream": bool(i % 2)}).encode()
                raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json"
                            b"\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)  # fmt: skip
                raw.close()
                outcomes.append("ok")
            else:  # bad: an unknown role, or a stop string far too long
                bad = (
                    {**body, "stop": "x" * 1_000_000}
                    if i % 2
                    else {**body, "messages": [{"role": "god", "content": "x"}]}
                )
                status, reply = server.post("/v1/chat/completions", bad)
                outcomes.append("ok" if status in (400, 413) and "error" in reply else f"not refused {status}")
        return outcomes

    stop, worst = threading.Event(), []
    watcher = threading.Thread(target=watch_models, args=(server, stop, worst))
    try:
        server.post("/v1/chat/completions", chat("warm up", max_tokens=2))
        before = server.rss_kb()
        watcher.start()
        with ThreadPoolExecutor(64) as pool:
            outcomes = [o for result in pool.map(client, range(64)) for o in result]
        time.sleep(1.0)  # the hung-up requests leave the batch
        after = server.rss_kb()
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join()
        code = server.stop()
    assert outcomes == ["ok"] * (64 * 3), [o for o in outcomes if o != "ok"][:5]
    assert max(worst) < 1.0, sorted(worst)[-5:]
    assert after - before < 150_000, (before, after)  # KB: what the load left behind is bounded
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert code in (0, -signal.SIGTERM, 128 + signal.SIGTERM)


def test_half_open_connections_neither_exhaust_nor_block_the_server(checkpoint, tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))  # our own 300 sockets
    server = Server(checkpoint, tmp_path / "log.txt", "--max_connections", "100", "--header_timeout", "3")
    half_open = []
    stop, worst = threading.Event(), []
    watcher = threading.Thread(target=watch_models, args=(server, stop, worst))
    try:
        for _ in range(300):  # slow-loris: headers begun, never finished; 3x the server's cap
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n")
            half_open.append(s)
        # While half-open connections hold every place, a client that sends its request takes the oldest one's.
        watcher.start()
        time.sleep(4.0)  # past --header_timeout: the ones still open are closed by the server
        closed = 0
        for s in half_open:
            s.settimeout(2)
            try:
                closed += s.recv(1) == b""
            except ConnectionResetError:
                closed += 1
    finally:
        stop.set()
        watcher.join()
        for s in half_open:
            s.close()
        server.stop()
    assert closed == 300
    assert max(worst) < 1.0, sorted(worst)[-5:]
    log = server.log.read_text()
    assert "Traceback" not in log and "Too many open files" not in log, log[-3000:]
    assert "closed connections waiting for headers" in log or "whose headers took over" in log


def test_sigterm_ends_every_request_in_flight_properly_and_the_process_exits(checkpoint, tmp_path):
    server = Server(checkpoint, tmp_path / "log.txt")
    long = {"model": "chat", "prompt": "Once upon a time", "max_tokens": 1000, "temperature": 0}
    results = {}

    def streamed():
        connection, response = server.request("POST", "/v1/completions", {**long, "stream": True})
        with contextlib.closing(connection):
            results["stream"] = response.read().decode()

    def plain():
        connection, response = server.request("POST", "/v1/chat/completions", chat("Tell me all", max_tokens=1000))
        with contextlib.closing(connection):
            results["plain"] = (response.status, json.loads(response.read()))

    threads = [threading.Thread(target=streamed), threading.Thread(target=plain)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # both decoding
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(30)
    code = server.proc.wait(timeout=30)
    elapsed = time.monotonic() - started
    events = [e[6:] for e in results["stream"].split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]" and "shutting down" in json.loads(events[-2])["error"]["message"]
    status, body = results["plain"]
    assert status == 503 and body["error"]["code"] == "server_shutting_down"
    assert elapsed < 10 and code in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    assert "Traceback" not in server.log.read_text()
    assert os.path.exists(checkpoint)
