"""The server under abuse, in-process through its ASGI interface: every refusal is an OpenAI error body with the
right status, a request whose client hangs up stops generating, the queue is bounded, the Host header is checked,
and concurrent requests decoded together each get the answer they get alone."""

import asyncio
import json

import pytest
import torch

pytest.importorskip("fastapi")

from lightning_gpt.chat import chat_stop_ids, chat_tokenizer, render_prompt  # noqa: E402
from lightning_gpt.generate import SamplingSettings, generate  # noqa: E402
from lightning_gpt.model import GPT, GPTConfig  # noqa: E402
from lightning_gpt.serving.app import build_app  # noqa: E402
from lightning_gpt.serving.guard import RequestGuard  # noqa: E402

TOKENIZER = chat_tokenizer()


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=32)).eval()


@pytest.fixture(scope="module")
def slow_model() -> GPT:
    """A model whose 1,000-token answer takes seconds on the CPU: long enough to hang up on or queue behind."""
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=1024, n_layer=2, n_head=2, n_embd=64)).eval()


@pytest.fixture
def app(model):
    app = build_app(model, TOKENIZER, "chat", max_batch=4, max_queue=2)
    yield app
    app.state.engine.close()


async def call(app, path: str, body=None, headers=None, method: str = "POST", hang_up_after: float | None = None):
    """One HTTP request through the ASGI interface: (status, headers, body). With `hang_up_after`, the client
    disconnects that many seconds after sending the request."""
    raw = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else (body or b"")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
        "headers": [(b"host", b"localhost:8000"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(raw)).encode()), *(headers or [])],
    }  # fmt: skip
    sent = False
    response = {"status": None, "headers": {}, "body": b""}
    loop = asyncio.get_running_loop()
    gone_at = loop.time() + (hang_up_after if hang_up_after is not None else 3600)

    async def receive():
        """As a server's: the body, then nothing until the client is gone, then the disconnect at once."""
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        if loop.time() < gone_at:
            await asyncio.sleep(gone_at - loop.time())
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            response["status"] = message["status"]
            response["headers"] = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            response["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return response["status"], response["headers"], response["body"]


def chat(content: str, **fields) -> dict:
    return {"model": "chat", "messages": [{"role": "user", "content": content}], **fields}


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize(
    ("fields", "param", "text"),
    [
        ({"stop": "x" * 100_000}, "stop", "at most 1000 characters"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 stop strings"),
        ({"seed": 2**64}, "seed", "less than"),
        ({"messages": [{"role": "user", "content": "hi \ud800 there"}]}, "messages", "unpaired surrogate"),
    ],
)
def test_edge_values_get_a_400_naming_the_field(app, fields, param, text):
    status, _, body = run(call(app, "/v1/chat/completions", {**chat("Hi"), **fields}))
    error = json.loads(body)["error"]
    assert status == 400 and error["param"] == param and text in error["message"], error


@pytest.mark.parametrize("fields", [{"temperature": 1e-300}, {"temperature": 1e-40}, {"top_p": 1e-300}])
def test_extreme_sampling_settings_still_sample(app, fields):
    """A temperature or top_p too small for float32 is (nearly) greedy: an answer, never NaN probabilities."""
    status, _, body = run(call(app, "/v1/chat/completions", chat("Hi", max_tokens=3, seed=1, **fields)))
    assert status == 200, body
    assert json.loads(body)["usage"]["completion_tokens"] >= 0


def test_a_body_over_the_limit_gets_413_before_it_is_parsed(app):
    guarded = RequestGuard(app, allowed_hosts=None, max_body_bytes=1_000)
    status, _, body = run(call(guarded, "/v1/chat/completions", chat("x" * 2_000)))
    assert status == 413 and "--max_request_mb" in json.loads(body)["error"]["message"]
    status, _, _ = run(call(guarded, "/v1/chat/completions", chat("Hi", max_tokens=1)))
    assert status == 200


def test_only_the_allowed_host_names_are_answered(app):
    guarded = RequestGuard(app, allowed_hosts=("localhost", "127.0.0.1"), max_body_bytes=1_000_000)
    status, _, body = run(call(guarded, "/v1/models", method="GET", headers=[(b"host", b"attacker.example")]))
    # A second Host header is what a rebinding page sends; the first one (localhost) must not win.
    assert status == 400 and "--allowed_hosts" in json.loads(body)["error"]["message"]
    scope_ok = run(call(guarded, "/v1/models", method="GET"))
    assert scope_ok[0] == 200


def test_a_client_that_hangs_up_stops_its_generation(slow_model):
    """Without streaming, the request notices the disconnect and its sequence leaves the batch long before the
    answer would have been done."""
    app = build_app(slow_model, TOKENIZER, "chat")
    engine = app.state.engine
    engine.stop_ids = ()  # no early stop: the answer would run to max_tokens

    seen = []  # the sequences the batch held, kept to count their tokens after they leave

    async def watch():
        while True:
            seen.extend(s for s in list(engine._batcher.active) if s not in seen)
            await asyncio.sleep(0.005)

    async def scenario():
        watcher = asyncio.create_task(watch())
        request = call(app, "/v1/chat/completions", chat("Tell me everything", max_tokens=1000), hang_up_after=0.1)
        status, _, _ = await asyncio.wait_for(request, timeout=60)
        for _ in range(1500):  # the worker sees the cancel at its next step (seconds on a loaded machine)
            if not engine._batcher.active:
                break
            await asyncio.sleep(0.02)
        watcher.cancel()
        return status, list(engine._batcher.active)

    try:
        status, active = run(scenario())
    finally:
        engine.close()
    # It left the batch cut short: far fewer tokens than the 1,000 it would have run to.
    assert status == 499 and active == [] and seen and all(len(s.tokens) < 500 for s in seen), [
        len(s.tokens) for s in seen
    ]


def test_a_full_queue_refuses_at_once_with_retry_after(slow_model):
    app = build_app(slow_model, TOKENIZER, "chat", max_batch=1, max_queue=1)
    engine = app.state.engine
    engine.stop_ids = ()  # no early stop: every answer runs to max_tokens

    async def scenario():
        long = [call(app, "/v1/chat/completions", chat(f"Question {i}", max_tokens=1000)) for i in range(2)]
        tasks = [asyncio.ensure_future(c) for c in long]  # one decoding, one waiting
        while engine.waiting < 1:  # the first is decoding, the second waits
            await asyncio.sleep(0.01)
        refused = await call(app, "/v1/chat/completions", chat("One more", max_tokens=1))
        engine.close()  # the two long ones end now, with the shutdown's 503
        return refused, await asyncio.gather(*tasks)

    (status, headers, body), done = run(scenario())
    assert status == 503 and headers.get("retry-after") == "1" and "--max_queue" in json.loads(body)["error"]["message"]
    assert [json.loads(b)["error"]["code"] for _, _, b in done] == ["server_shutting_down"] * 2


def test_concurrent_requests_each_get_the_answer_they_get_alone(model):
    app = build_app(model, TOKENIZER, "chat", max_batch=4, max_queue=16)
    questions = [f"Question number {i}: what is {i} plus {i}?" * (1 + i % 3) for i in range(10)]
    stops = chat_stop_ids(TOKENIZER)

    def alone(question: str, max_tokens: int, seed: int | None, temperature: float) -> str:
        prompt = render_prompt(TOKENIZER, [{"role": "user", "content": question}])
        settings = SamplingSettings(max_new_tokens=max_tokens, temperature=temperature, seed=seed, stop_ids=stops)
        return TOKENIZER.decode(generate(model, [prompt], settings)[0])

    async def scenario():
        requests = [call(app, "/v1/chat/completions", chat(q, max_tokens=5 + 3 * i, temperature=t, seed=s))
                    for i, q in enumerate(questions) for t, s in ((0.0, None), (1.0, 7 + i))]  # fmt: skip
        return await asyncio.gather(*requests)

    try:
        replies = run(scenario())
    finally:
        app.state.engine.close()
    expected = [alone(q, 5 + 3 * i, s, t) for i, q in enumerate(questions) for t, s in ((0.0, None), (1.0, 7 + i))]
    answers = [json.loads(body)["choices"][0]["message"]["content"] for _, _, body in replies]
    assert answers == expected
