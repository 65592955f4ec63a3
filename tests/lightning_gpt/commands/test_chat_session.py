"""The chat loop (lightning_gpt/commands/chat_session.py): commands, labels, Ctrl+C during an answer, Ctrl+D, no
warnings at every turn, and with --docs the sources of the passages each answer was given."""

import io
import json
import warnings

import pytest
import torch

from lightning_gpt.chat import (  # noqa: E402
    chat_stop_ids,
    chat_tokenizer,
)
from lightning_gpt.commands.chat_session import ChatSession, run_chat
from lightning_gpt.generate import SamplingSettings
from lightning_gpt.model import GPT, GPTConfig
from lightning_gpt.passages import (
    source_list,  # noqa: E402
)
from lightning_gpt.retrieval.index import context_prompt, load_index  # noqa: E402
from tests.conftest import QUESTION, planted_folder

TOKENIZER = chat_tokenizer()


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("tiny", vocab_size=TOKENIZER.vocab_size, block_size=64)).eval()


def session(model, out=None, max_new_tokens=8, system=None) -> ChatSession:
    settings = SamplingSettings(max_new_tokens=max_new_tokens, temperature=0, stop_ids=chat_stop_ids(TOKENIZER))
    return ChatSession(model, TOKENIZER, settings, system=system, out=out or io.StringIO())


def test_system_save_reset_and_labels_in_a_terminal(model, tmp_path):
    chat, err = session(model, system="Be brief."), io.StringIO()
    lines = ["Hi", "/system Answer in French.", "/save " + str(tmp_path / "c.json"), "/nope", "/reset", "/save"]
    run_chat(chat, lines, interactive=True, err=err)
    saved = json.loads((tmp_path / "c.json").read_text())["messages"]
    # The new system message replaced the old one and the exchange stayed; /reset then kept only the system turn.
    assert [m["role"] for m in saved] == ["system", "user", "assistant"]
    assert saved[0]["content"] == "Answer in French." and saved[1]["content"] == "Hi"
    assert chat.messages == [{"role": "system", "content": "Answer in French."}]
    shown = err.getvalue()
    assert shown.count("you> ") == len(lines) + 1 and shown.count("model> ") == 1  # + the prompt before Ctrl+D
    for confirmation in ("(system message set)", "(saved to", "(unknown command /nope", "(conversation cleared)"):
        assert confirmation in shown
    assert "(/save needs a file name" in shown


class InterruptedOutput(io.StringIO):
    """A terminal where the user presses Ctrl+C while the second piece of an answer is being printed."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    def write(self, text: str) -> int:
        if self.armed and len(self.getvalue()) > 0 and text != "\n":
            self.armed = False
            raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_stops_the_answer_and_the_conversation_goes_on(model):
    out, err = InterruptedOutput(), io.StringIO()
    chat = session(model, out=out, max_new_tokens=20)
    run_chat(chat, ["Tell me a long story.", "And another?"], interactive=True, err=err)
    assert "(answer stopped)" in err.getvalue()
    roles = [m["role"] for m in chat.messages]
    assert roles == ["user", "assistant", "user", "assistant"]  # the second message was answered too
    first = chat.messages[1]["content"]
    assert first and out.getvalue().startswith(first)  # the stopped answer keeps what was printed


def test_a_long_conversation_warns_at_no_turn(model):
    chat = session(model, max_new_tokens=200)  # more than the 64-token context could ever hold
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_chat(chat, [f"Message number {i} with some words in it." for i in range(6)])
    assert not caught
    assert len(chat.messages) >= 2 and chat.messages[-1]["role"] == "assistant"


@pytest.fixture(scope="module")
def docs_model() -> GPT:
    """A tiny random chat model with room for passages in its prompt (160 tokens)."""
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("tiny", vocab_size=TOKENIZER.vocab_size, block_size=160)).eval()


def test_chat_prints_the_sources_of_the_passages_in_its_prompt(docs_model, tmp_path):
    pytest.importorskip("bm25s")
    model = docs_model
    index = load_index(str(planted_folder(tmp_path / "docs")), tmp_path / "cache")
    out = io.StringIO()
    settings = SamplingSettings(max_new_tokens=16, temperature=0, stop_ids=chat_stop_ids(TOKENIZER))
    session = ChatSession(model, TOKENIZER, settings, system="Be brief.", out=out, index=index, top_k=3)
    asked = []
    for question in (QUESTION, "And what is under the red mat?"):
        asked.append(list(session.messages) + [{"role": "user", "content": question}])
        run_chat(session, [question])
        prompt, _, used = context_prompt(TOKENIZER, asked[-1], index.search(question, 3), session.budget)
        assert session.sources == used and used  # what is printed is what the prompt was given
        assert len(prompt) + settings.max_new_tokens <= model.config.block_size
    lines = out.getvalue().splitlines()
    sources = [line for line in lines if line.startswith("sources: ")]
    assert len(sources) == 2 and sources[-1] == f"sources: {source_list(session.sources)}"
    assert sources[0].startswith("sources: [1] facts/lighthouse.txt, lines ")
    assert session.messages[0] == {"role": "system", "content": "Be brief."}  # passages are per turn, not history
