"""lightning-gpt web as a user meets it: a real server process with a tiny random chat model, and the page driven in
headless chromium (Playwright with the system's browser; the browser tests skip where either is missing).

Answers in the page are compared with the API's greedy answers to the same messages, so the page sends the
conversation, the system prompt and the settings it shows, and renders the streamed text unchanged.
"""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("fastapi")

from lightning_gpt.__main__ import command_parser  # noqa: E402
from lightning_gpt.serving.web import page  # noqa: E402
from tests.conftest import serving_checkpoints  # noqa: E402

SYSTEM = "You are terse."
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Records the answer's length each time the page changes it (a MutationObserver callback runs once per task that
# changed the DOM): lengths seen at different moments show that the answer grew while it streamed.
WATCH = """() => {
    window.lengths = [];
    const conversation = document.querySelector('#conversation');
    new MutationObserver(() => {
        const answer = conversation.querySelector('li.assistant:last-child .content');
        if (answer) window.lengths.push(answer.textContent.length);
    }).observe(conversation, {childList: true, subtree: true, characterData: true});
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def greedy(url: str, messages: list[dict], max_tokens: int) -> str:
    status, body = post(url, {"messages": messages, "temperature": 0, "max_tokens": max_tokens})
    assert status == 200, body
    return body["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The URL of a real `lightning-gpt web` process serving a tiny random chat checkpoint, with two documents."""
    root = tmp_path_factory.mktemp("web")
    ckpt, log_path, port = serving_checkpoints(root, ("chat",))["chat"], root / "web.log", free_port()
    (root / "docs").mkdir()
    (root / "docs" / "keys.md").write_text("The spare key hangs behind the lighthouse door.\n")
    (root / "docs" / "stock.csv").write_text("item,shelf\nblue rug,B7\nspare key,C3\n")
    cmd = [sys.executable, "-m", "lightning_gpt", "web", "--ckpt_path", str(ckpt), "--port", str(port)]
    cmd += ["--docs", str(root / "docs")]  # answers to questions about the documents show their sources
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the server exited: {log_path.read_text()}"
            assert time.monotonic() < deadline, f"the server did not answer in 60 s: {log_path.read_text()}"
            try:
                urllib.request.urlopen(f"{url}/v1/models", timeout=2).close()
                break
            except OSError:
                time.sleep(0.2)
        yield url
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = next(filter(None, map(shutil.which, BROWSERS)), None)
    if executable is None:
        pytest.skip(f"no chromium found (looked for {', '.join(BROWSERS)}); apt-get install chromium")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def chat_page(browser, server):  # the browser first: without one, the test skips before a server starts
    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto(server)
    yield page
    page.close()


def ask(page, text: str) -> str:
    """Type a message, press Enter, and return the answer once it has finished streaming."""
    page.fill("#message", text)
    page.press("#message", "Enter")
    page.wait_for_selector('#conversation li.assistant:last-child[aria-busy="false"]')
    return page.text_content("#conversation li.assistant:last-child .content")


def turns(page) -> list[tuple[str, str]]:
    items = page.query_selector_all("#conversation li")
    return [(li.get_attribute("class"), li.query_selector(".content").text_content()) for li in items]


def test_web_serves_its_page_at_the_root_beside_the_api(tmp_path):
    """In-process: the app the web command builds from its flags, through FastAPI's TestClient."""
    from fastapi.testclient import TestClient

    module, parser = command_parser("web")
    ckpt = serving_checkpoints(tmp_path, ("chat",))["chat"]
    with TestClient(module.load_app(parser.parse_args(["--ckpt_path", ckpt, "--device", "cpu"]))) as http:
        served = http.get("/")
        assert served.status_code == 200 and served.headers["content-type"].startswith("text/html")
        assert served.text == page()
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["chat"]  # the API the page calls
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}]
        reply = http.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 3, "temperature": 0})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] <= 3
    html = page()
    for control in ("system", "temperature", "top_p", "max_tokens", "message", "send", "clear", "conversation"):
        assert f'id="{control}"' in html
        assert control in ("send", "clear", "conversation") or f'for="{control}"' in html  # every input is labelled


@pytest.mark.slow
def test_the_answer_streams_in_equals_the_apis_and_clear_empties_the_conversation(chat_page, server):
    page = chat_page
    page.wait_for_function("() => document.querySelector('#model').textContent.includes('context of 64 tokens')")
    page.fill("#system", SYSTEM)
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "16")
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name a colour."}]
    expected = greedy(server, first, 16)
    assert expected  # a non-empty answer, or there is nothing to see stream

    page.evaluate(WATCH)
    assert ask(page, "Name a colour.") == expected
    lengths = page.evaluate("window.lengths")
    assert len({n for n in lengths if 0 < n < len(expected)}) >= 2, lengths  # seen growing, twice, before the end
    assert page.input_value("#message") == ""

    # The second turn carries the first: the page sends the history with the system prompt in front.
    # The settings are read for each message: a shorter max_tokens leaves room in the 64-token context.
    page.fill("#max_tokens", "8")
    second = first + [{"role": "assistant", "content": expected}, {"role": "user", "content": "Another one?"}]
    assert ask(page, "Another one?") == greedy(server, second, 8)
    assert [role for role, _ in turns(page)] == ["user", "assistant", "user", "assistant"]

    page.click("#clear")
    assert turns(page) == []
    page.fill("#max_tokens", "16")
    # Cleared for the model too: the same first message gets the first answer again, not one that follows the history.
    assert ask(page, "Name a colour.") == expected
    assert len(turns(page)) == 2


@pytest.mark.slow
def test_a_bad_setting_shows_the_apis_error_in_the_page(chat_page, server):
    page = chat_page
    page.fill("#max_tokens", "100000")
    page.fill("#message", "Hello?")
    page.click("#send")
    page.wait_for_selector("#error:not(:empty)")
    status, body = post(server, {"messages": [{"role": "user", "content": "Hello?"}], "max_tokens": 100000})
    assert status == 400
    assert page.text_content("#error") == body["error"]["message"]
    assert "max_tokens 100000 is beyond the context" in body["error"]["message"]
    assert turns(page) == []  # the failed turn is not left in the conversation...
    assert page.input_value("#message") == "Hello?"  # ...and the message is back in the box to edit

    page.fill("#max_tokens", "4")  # a good setting: the error goes, the answer comes
    page.click("#send")
    page.wait_for_selector('#conversation li.assistant[aria-busy="false"]')
    assert page.text_content("#error") == ""


@pytest.mark.slow
def test_the_sources_of_an_answer_are_shown_under_it(chat_page, server):
    page = chat_page
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "8")
    status, body = post(server, {"messages": [{"role": "user", "content": "Where is the spare key?"}], "max_tokens": 8})
    assert status == 200 and body["sources"] and set(body["sources"]) <= {"keys.md, lines 1-1", "stock.csv, row 2"}
    ask(page, "Where is the spare key?")
    shown = page.text_content("#conversation li.assistant:last-child .sources")
    assert shown == "Sources: " + "; ".join(f"[{i}] {s}" for i, s in enumerate(body["sources"], start=1))
    ask(page, "Zzz?")  # no document shares a word with it: nothing is cited
    assert page.query_selector("#conversation li.assistant:last-child .sources") is None
