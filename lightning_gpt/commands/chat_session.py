"""The conversation loop of `lightning-gpt chat`: history that fits the context, streamed answers, and the
slash commands. Interactive (a terminal) it labels the turns and confirms commands on stderr; with stdin piped it
prints only the answers, one per line; with stdout not a terminal (piped, redirected), a newline inside an answer
is written as the two characters `\\n` and a backslash as `\\\\`, so that each answer stays one line. With
documents (`--docs`), each answer is followed by a line naming the sources of the passages it was given:
`sources: [1] notes.md, lines 3-9; [2] prices.csv, row 12`."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

from lightning_gpt.chat import fit_history, render_prompt
from lightning_gpt.generate import SamplingSettings, stream
from lightning_gpt.model import GPT
from lightning_gpt.passages import Chunk, source_list
from lightning_gpt.retrieval.index import DocumentIndex, context_prompt
from lightning_gpt.streamed_text import StreamedText
from lightning_gpt.tokenizer import Tokenizer

# Every character `str.splitlines` breaks at, as Python writes it in a string literal: a reader splitting the
# output on any of them still sees one answer per line.
_LINE_BREAKS = {"\\": "\\\\", "\n": "\\n", "\r": "\\r"} | {
    c: f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
}
_ESCAPES = str.maketrans(_LINE_BREAKS)


def escape_line(text: str) -> str:
    """`text` on one line: backslashes doubled, every line break written as its escape (`\\n`, `\\x0b`, `\\u2028`).

    Reversible: Python's `unicode_escape` reads it back."""
    return text.translate(_ESCAPES)


class ChatSession:
    """A conversation with a chat model: `messages` (system turn first, if any) and what the commands do to it."""

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        settings: SamplingSettings,
        system: str | None = None,
        out=None,
        index: DocumentIndex | None = None,
        top_k: int = 3,
        one_line: bool = False,
    ) -> None:
        """
        Args:
            index: documents to answer from: the best `top_k` passages for each user message go into the prompt,
                and their sources are printed after the answer.
            one_line: print each answer on one line, its newlines as `\\n` and backslashes as `\\\\` (for
                output that a program reads line by line).
        """
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.out = out or sys.stdout
        self.one_line = one_line
        self.index, self.top_k = index, top_k
        self.sources: list[Chunk] = []  # the passages the last answer was given
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        context = model.config.block_size
        self.budget = context - min(settings.max_new_tokens, context // 2)  # the prompt's share of the context

    def reset(self) -> None:
        """Forgets every turn but the system message."""
        self.messages = [m for m in self.messages[:1] if m["role"] == "system"]

    def set_system(self, text: str) -> None:
        """Sets (or, with empty text, removes) the system message; the turns after it stay."""
        turns = [m for m in self.messages if m["role"] != "system"]
        self.messages = ([{"role": "system", "content": text}] if text else []) + turns

    def save(self, path: str) -> Path:
        target = Path(path).expanduser()
        target.write_text(json.dumps({"messages": self.messages}, ensure_ascii=False, indent=1) + "\n")
        return target

    def answer(self, text: str) -> tuple[str, bool]:
        """Streams the answer to the user's `text` to `out` and adds both turns. Returns (answer, whether it was
        stopped by Ctrl+C): a stopped answer keeps what was printed, and the conversation goes on."""
        self.messages = fit_history(self.tokenizer, [*self.messages, {"role": "user", "content": text}], self.budget)
        if self.index is None:
            prompt = render_prompt(self.tokenizer, self.messages)
        else:
            passages = self.index.search(text, self.top_k)
            prompt, _, self.sources = context_prompt(self.tokenizer, self.messages, passages, self.budget)
        # Room left in the context: asking for more only makes generate warn at every turn.
        settings = replace(self.settings, max_new_tokens=min(self.settings.max_new_tokens, self.budget_left(prompt)))
        text = StreamedText(self.tokenizer.decode, settings.stop_strings)
        shown: list[str] = []  # what was printed: an answer stopped by Ctrl+C keeps no more than the user saw
        stopped = False
        try:
            for pairs in stream(self.model, [prompt], settings, decode=self.tokenizer.decode):
                self._print(text.add(pairs[0][1]), shown)
            self._print(text.rest(), shown)
        except KeyboardInterrupt:
            stopped = True
        self.out.write("\n")
        if self.index is not None:
            self.out.write(f"sources: {source_list(self.sources) or '(no passage matched)'}\n")
        self.out.flush()
        answer = "".join(shown) if stopped else text.text()
        self.messages.append({"role": "assistant", "content": answer or " "})
        return answer, stopped

    def _print(self, piece: str, shown: list[str]) -> None:
        if piece:
            self.out.write(escape_line(piece) if self.one_line else piece)
            self.out.flush()
            shown.append(piece)

    def budget_left(self, prompt: list[int]) -> int:
        return max(0, self.model.config.block_size - len(prompt))


def _stdin_lines() -> Iterator[str | bytes]:
    """Lines of standard input as text; a line that is not UTF-8 comes as its bytes, for the loop to refuse alone."""
    for raw in sys.stdin.buffer:
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            yield raw


def run_chat(
    session: ChatSession, lines: Iterable[str] | None = None, interactive: bool = False, err=None, help_text: str = ""
) -> None:
    """Reads user messages and commands from `lines` (stdin by default) until /quit or their end (Ctrl+D);
    `help_text` lists the commands (when interactive, and after an unknown one)."""
    err = err or sys.stderr
    source = iter(lines if lines is not None else _stdin_lines())

    def note(message: str) -> None:
        if interactive:
            print(message, file=err, flush=True)

    def problem(message: str) -> None:  # always shown (on stderr, so piped answers stay one per line)
        print(message, file=err, flush=True)

    note(f"Chatting. {help_text}")
    while True:
        if interactive:
            print("you> ", end="", flush=True, file=err)
        try:
            line = next(source, None)
        except KeyboardInterrupt:  # Ctrl+C at the prompt: a fresh line, as a shell does
            note("")
            continue
        if line is None:  # end of input (Ctrl+D)
            note("")
            return
        if isinstance(line, bytes):
            problem(f"(a line of input is not UTF-8 text, so it was not sent: {line[:40]!r}...)")
            continue
        text = line.strip()
        command, _, rest = text.partition(" ")
        if command == "/quit":
            return
        if command == "/reset":
            session.reset()
            note("(conversation cleared)")
        elif command == "/system":
            session.set_system(rest.strip())
            note(f"(system message {'set' if rest.strip() else 'removed'})")
        elif command == "/save":
            if not rest.strip():
                note("(/save needs a file name: /save chat.json)")
            else:
                try:
                    note(f"(saved to {session.save(rest.strip())})")
                except OSError as why:  # the conversation is kept: the user can save it elsewhere
                    problem(f"(could not save to {rest.strip()}: {why.strerror or why}; the conversation goes on)")
        elif text.startswith("/") and " " not in text:
            note(f"(unknown command {command}; {help_text})")
        elif text:
            if interactive:
                print("model> ", end="", flush=True, file=err)
            with warnings.catch_warnings():  # e.g. a long prompt cut from the left: once is enough, not every turn
                warnings.simplefilter("ignore")
                _, stopped = session.answer(text)
            if stopped:
                note("(answer stopped)")
