"""lightning-gpt serve as a process: a real uvicorn server answers the official openai client, streamed too, and
stops cleanly on SIGTERM and on Ctrl+C; without the serve extra the command says what to install. The routes in
detail, in-process: tests/lightning_gpt/serving/test_app.py."""

import signal
import socket
import subprocess
import sys
import time

import pytest

from lightning_gpt.__main__ import main
from lightning_gpt.chat import chat_stop_ids, render_prompt
from lightning_gpt.generate import SamplingSettings, generate
from lightning_gpt.loading import load_checkpoint
from tests.conftest import CONVERSATION, serving_checkpoints


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(ckpt: str, log_path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "lightning_gpt", "serve", "--ckpt_path", ckpt, "--port", str(port)]
    with open(log_path, "w") as log:  # the child keeps its own copy of the file descriptor
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}/v1"


def wait_ready(openai, proc: subprocess.Popen, url: str, log_path, timeout: float = 60) -> None:
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited: {log_path.read_text()}"
        try:
            client.models.list()
            return
        except openai.APIConnectionError:
            time.sleep(0.2)
    raise AssertionError(f"the server did not answer in {timeout} s: {log_path.read_text()}")


@pytest.mark.slow
def test_a_real_server_answers_the_openai_client_and_stops_cleanly_on_sigterm_and_ctrl_c(tmp_path):
    pytest.importorskip("fastapi")
    openai = pytest.importorskip("openai")
    ckpts = serving_checkpoints(tmp_path, ("chat", "plain"))
    servers = {kind: {"log": tmp_path / f"{kind}.log"} for kind in ckpts}
    try:
        for kind, server in servers.items():  # both start at once: most of a start is importing torch and lightning
            server["proc"], server["url"] = start(ckpts[kind], server["log"])
        for server in servers.values():
            wait_ready(openai, server["proc"], server["url"], server["log"])
            server["client"] = openai.OpenAI(base_url=server["url"], api_key="none", max_retries=0, timeout=60)

        # A chat answer, whole and streamed: the greedy answer of generate() on the rendered conversation.
        chat = servers["chat"]["client"]
        model, tokenizer = load_checkpoint(ckpts["chat"], "cpu")
        prompt = render_prompt(tokenizer, CONVERSATION)
        greedy = SamplingSettings(max_new_tokens=12, temperature=0, stop_ids=chat_stop_ids(tokenizer))
        ids = generate(model, [prompt], greedy)[0]
        assert [m.id for m in chat.models.list().data] == ["chat"]
        reply = chat.chat.completions.create(model="chat", messages=CONVERSATION, max_tokens=12, temperature=0)
        assert reply.choices[0].message.content == tokenizer.decode(ids)
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(prompt), len(ids))
        chunks = chat.chat.completions.create(
            model="chat", messages=CONVERSATION, max_tokens=12, temperature=0, stream=True
        )
        pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert "".join(pieces) == tokenizer.decode(ids) and len(pieces) > 1  # sent as generated

        # A completion of plain text on the pretraining-vocabulary model.
        model, tokenizer = load_checkpoint(ckpts["plain"], "cpu")
        greedy = SamplingSettings(max_new_tokens=10, temperature=0, stop_ids=(tokenizer.eot_id,))
        ids = generate(model, [tokenizer.encode("The cat sat on")], greedy)
        reply = servers["plain"]["client"].completions.create(
            model="plain", prompt="The cat sat on", max_tokens=10, temperature=0
        )
        assert reply.choices[0].text == tokenizer.decode(ids[0])

        for kind, sig, codes in (("chat", signal.SIGTERM, (0, -signal.SIGTERM)), ("plain", signal.SIGINT, (0,))):
            proc = servers[kind]["proc"]
            proc.send_signal(sig)
            assert proc.wait(timeout=20) in codes
            log = servers[kind]["log"].read_text()
            assert "Traceback" not in log and "Finished server process" in log
    finally:
        for server in servers.values():
            if "proc" in server and server["proc"].poll() is None:
                server["proc"].kill()
                server["proc"].wait()


@pytest.mark.parametrize("command", ["serve", "web"])
def test_serve_and_web_without_the_extra_say_what_to_install(command, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # makes `import uvicorn` fail
    monkeypatch.setattr(sys, "argv", ["lightning-gpt", command, "--ckpt_path", "missing.ckpt"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"lightning-gpt {command} needs FastAPI and uvicorn" in err and 'pip install -e ".[serve]"' in err
