"""The HTTP app of lightning-gpt serve (lightning_gpt/serving/app.py) as a client meets it: the official openai client
against the app the serve command builds (its own flags, `load_app`), in-process through FastAPI's TestClient, over
tiny random models. A real uvicorn process: tests/lightning_gpt/commands/test_serve.py.

Greedy answers are compared with lightning_gpt.generate.generate on the same prompt, so the app neither changes the
sampling nor mixes concurrent requests up.
"""

import contextlib
import importlib.util
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from fastapi.testclient import TestClient  # noqa: E402

from lightning_gpt.__main__ import command_parser  # noqa: E402
from lightning_gpt.chat import chat_stop_ids, render_prompt  # noqa: E402
from lightning_gpt.generate import SamplingSettings, generate  # noqa: E402
from lightning_gpt.loading import load_checkpoint  # noqa: E402
from tests.conftest import CONVERSATION, serving_checkpoints, write_docs  # noqa: E402


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A chat and a plain (pretraining-vocabulary) app, and a chat app over documents (`--docs`, when the docs extra
    is installed), each built by the serve command from its checkpoint and flags, each reached by an openai client;
    and their models, loaded again for reference."""
    root = tmp_path_factory.mktemp("serve")
    kinds = ("chat", "plain", *(("docs",) if importlib.util.find_spec("bm25s") is not None else ()))
    module, parser = command_parser("serve")
    out = {}
    with contextlib.ExitStack() as running:
        for kind, ckpt in serving_checkpoints(root, kinds).items():
            flags, out[kind] = ["--ckpt_path", ckpt, "--device", "cpu"], {}
            if kind == "docs":
                out[kind]["docs"] = write_docs(root / "docs")
                flags += ["--docs", str(out[kind]["docs"]), "--docs_cache", str(root / "cache")]
            # Entered, a TestClient runs the app on one event loop for all requests, as uvicorn does.
            http = running.enter_context(TestClient(module.load_app(parser.parse_args(flags))))
            out[kind]["client"] = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=http,
                                                max_retries=0)  # fmt: skip
            out[kind]["model"], out[kind]["tokenizer"] = load_checkpoint(ckpt, "cpu")
        yield out


def greedy(server: dict, prompt: list[int], max_tokens: int, stop_ids: tuple[int, ...]) -> list[int]:
    settings = SamplingSettings(max_new_tokens=max_tokens, temperature=0, stop_ids=stop_ids)
    return generate(server["model"], [prompt], settings)[0]


def chat_reference(server: dict, messages: list[dict], max_tokens: int) -> tuple[str, list[int], list[int]]:
    """(text, prompt ids, answer ids) of the greedy answer that `lightning-gpt chat` would give."""
    tokenizer = server["tokenizer"]
    prompt = render_prompt(tokenizer, messages)
    ids = greedy(server, prompt, max_tokens, chat_stop_ids(tokenizer))
    return tokenizer.decode(ids), prompt, ids


def test_models_lists_the_checkpoint(servers):
    models = servers["chat"]["client"].models.list().data
    assert [m.id for m in models] == ["chat"]


def test_chat_greedy_answer_is_generates_with_length_finish_and_real_usage(servers):
    server = servers["chat"]
    text, prompt, ids = chat_reference(server, CONVERSATION, 12)
    reply = server["client"].chat.completions.create(model="chat", messages=CONVERSATION, max_tokens=12, temperature=0)
    assert reply.choices[0].message.content == text
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == ("length" if len(ids) == 12 else "stop")
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(prompt), len(ids))
    assert reply.usage.total_tokens == len(prompt) + len(ids)


def test_chat_stream_sends_the_same_answer_in_pieces(servers):
    server = servers["chat"]
    text, prompt, ids = chat_reference(server, CONVERSATION, 12)
    chunks = list(
        server["client"].chat.completions.create(
            model="chat",
            messages=CONVERSATION,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == text
    assert len(pieces) > 1  # sent as generated, not as one block at the end
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length" if len(ids) == 12 else "stop"]
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (len(prompt), len(ids))


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_string_cuts_the_answer(servers, stream):
    server = servers["chat"]
    text, _, _ = chat_reference(server, CONVERSATION, 20)
    stop = text[5:8]
    kwargs = {"model": "chat", "messages": CONVERSATION, "max_tokens": 20, "temperature": 0, "stop": [stop]}
    if stream:
        chunks = server["client"].chat.completions.create(stream=True, **kwargs)
        pieces, finish = [], None
        for c in chunks:
            pieces.append(c.choices[0].delta.content or "")
            finish = c.choices[0].finish_reason or finish
        answer = "".join(pieces)
    else:
        reply = server["client"].chat.completions.create(**kwargs)
        answer, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
    assert answer == text[: text.index(stop)]
    assert finish == "stop"


def test_a_seed_fixes_the_sampled_answer(servers):
    client = servers["chat"]["client"]
    answers = {
        client.chat.completions.create(
            model="chat", messages=CONVERSATION, max_tokens=10, temperature=1.0, top_p=0.9, seed=7
        )
        .choices[0]
        .message.content
        for _ in range(2)
    }
    assert len(answers) == 1


def test_completions_on_a_pretrained_checkpoint(servers):
    server = servers["plain"]
    tokenizer = server["tokenizer"]
    prompt = tokenizer.encode("The cat sat on")
    ids = greedy(server, prompt, 10, (tokenizer.eot_id,))
    reply = server["client"].completions.create(model="plain", prompt="The cat sat on", max_tokens=10, temperature=0)
    assert reply.choices[0].text == tokenizer.decode(ids)
    assert reply.choices[0].finish_reason == ("length" if len(ids) == 10 else "stop")
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(prompt), len(ids))
    chunks = server["client"].completions.create(
        model="plain", prompt="The cat sat on", max_tokens=10, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in chunks) == tokenizer.decode(ids)


@pytest.mark.parametrize(
    ("kind", "request_args", "message", "param"),
    [
        ("chat", {"messages": [{"role": "tool", "content": "hi"}]}, "role 'tool' is unknown", "messages"),
        ("chat", {"messages": []}, "messages is empty", "messages"),
        ("chat", {"messages": CONVERSATION, "max_tokens": 1000}, "max_tokens 1000 is beyond the context", "max_tokens"),
        ("chat", {"messages": CONVERSATION, "temperature": -1}, "temperature", "temperature"),
        ("plain", {"messages": CONVERSATION}, "pretrained checkpoint without chat tokens", "model"),
    ],
)
def test_bad_requests_get_an_openai_error_and_the_server_lives_on(servers, kind, request_args, message, param):
    client = servers[kind]["client"]
    with pytest.raises(openai.BadRequestError, match=message) as err:
        client.chat.completions.create(model=kind, **request_args)
    assert err.value.status_code == 400
    assert set(err.value.body) == {"message", "type", "param", "code"}  # the client unwraps {"error": ...}
    assert err.value.body["type"] == "invalid_request_error" and err.value.body["param"] == param
    assert client.models.list().data  # still serving


def test_concurrent_requests_each_get_their_own_answer(servers):
    server = servers["chat"]
    conversations = [[{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"}] for i in range(8)]
    references = [chat_reference(server, c, 6 + i) for i, c in enumerate(conversations)]

    def ask(i: int) -> tuple[str, int]:
        kwargs = {"model": "chat", "messages": conversations[i], "max_tokens": 6 + i, "temperature": 0}
        if i % 2:  # half of them streamed
            chunks = list(
                server["client"].chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            return text, chunks[-1].usage.completion_tokens
        reply = server["client"].chat.completions.create(**kwargs)
        return reply.choices[0].message.content, reply.usage.completion_tokens

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert answers == [(text, len(ids)) for text, _, ids in references]
    assert len({text for text, _, _ in references}) == 8  # the answers differ, so a mix-up would show


def test_with_docs_the_answer_lists_the_sources_of_the_passages_in_its_prompt(servers, tmp_path):
    if "docs" not in servers:
        pytest.skip("the docs extra (bm25s, pypdf) is not installed")
    from lightning_gpt.retrieval.index import context_prompt, load_index

    server = servers["docs"]
    client, model, tokenizer = server["client"], server["model"], server["tokenizer"]
    index = load_index(str(server["docs"]), tmp_path / "cache")  # the same documents, indexed here for reference
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is the spare key?"}]
    prompt, _, used = context_prompt(tokenizer, messages, index.search("Where is the spare key?", 3), 96 - 12)
    sources = [c.source for c in used]
    assert sources == ["log.txt, lines 1-1"] and len(index.search("Where is the spare key?", 3)) == 3
    ids = generate(
        model, [prompt], SamplingSettings(max_new_tokens=12, temperature=0, stop_ids=chat_stop_ids(tokenizer))
    )
    reply = client.chat.completions.create(model="d", messages=messages, max_tokens=12, temperature=0)
    assert reply.model_extra["sources"] == sources  # an extra field: the client keeps it, and ignores it
    assert reply.choices[0].message.content == tokenizer.decode(ids[0])  # the answer to exactly that prompt
    assert reply.usage.prompt_tokens == len(prompt) and len(prompt) + 12 <= 96
    chunks = list(
        client.chat.completions.create(model="d", messages=messages, max_tokens=12, temperature=0, stream=True)
    )
    assert chunks[0].model_extra["sources"] == sources
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply.choices[0].message.content
