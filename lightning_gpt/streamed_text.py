"""Text as tokens arrive, cut at stop strings: what `generate` and `chat` print and `serve` sends.

Only final text is released: a character split across tokens waits for its last byte, and an ending that may be
the start of a stop string waits until the next token settles it, so nothing of a stop string is ever shown. The
work per token is linear in the new text: it decodes only the tokens not yet decoded and matches stop strings with
one Knuth-Morris-Pratt automaton each, so a long answer or a long stop string costs no quadratic time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

# A UTF-8 character has at most 4 bytes and a token at least 1: text still incomplete after 4 tokens is not a
# character waiting for its last byte but bytes that are not UTF-8, released with replacement characters.
MAX_SPLIT_TOKENS = 4


def prefix_function(pattern: str) -> list[int]:
    """KMP's failure table: for each prefix pattern[:i + 1], the length of its longest proper prefix that is also
    its suffix."""
    table = [0] * len(pattern)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = table[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        table[i] = k
    return table


class StopMatcher:
    """Finds where the first stop string to appear starts, in text fed piece by piece.

    Args:
        stops: the stop strings (empty ones are ignored).
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = [s for s in stops if s]
        self.tables = [prefix_function(s) for s in self.stops]
        self.states = [0] * len(self.stops)  # per stop: how many of its first characters end the text
        self.fed = 0
        self.found: int | None = None

    def feed(self, text: str) -> int | None:
        """Feeds the next `text`. Returns the index, in all the text fed, where the first stop string to complete
        starts (the earliest start among those completing at the same character), or None while there is none."""
        if self.found is not None or not self.stops:
            self.fed += len(text)
            return self.found
        for offset, char in enumerate(text):
            for j, stop in enumerate(self.stops):
                k, table = self.states[j], self.tables[j]
                while k and stop[k] != char:
                    k = table[k - 1]
                if stop[k] == char:
                    k += 1
                if k == len(stop):
                    start = self.fed + offset + 1 - k
                    self.found = start if self.found is None else min(self.found, start)
                    k = table[k - 1]
                self.states[j] = k
            if self.found is not None:
                break
        self.fed += len(text)
        return self.found

    @property
    def pending(self) -> int:
        """How many characters at the end of the text fed may be the start of a stop string."""
        return max(self.states, default=0)


class StreamedText:
    """The text of the tokens generated so far, released in final pieces.

    Args:
        decode: token ids -> text (the tokenizer's decode).
        stop_strings: the text ends where the first of these starts; none of it is released.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop_strings: Iterable[str] = ()) -> None:
        self.decode = decode
        self.tokens: list[int] = []
        self._decoded = 0  # tokens whose text is in self._text
        self._text = ""
        self._matcher = StopMatcher(stop_strings)
        self.released = 0  # characters of the text handed out so far

    @property
    def stopped(self) -> bool:
        """Whether a stop string has appeared: the tokens after it are no part of the text."""
        return self._matcher.found is not None

    def add(self, token: int) -> str:
        """Adds a token; returns the text that has become final with it (often "", never part of a stop string)."""
        self.tokens.append(token)
        if self.stopped:
            return ""
        waiting = self.tokens[self._decoded :]
        piece = self.decode(waiting)
        if piece.endswith("\ufffd") and len(waiting) < MAX_SPLIT_TOKENS:  # a character split across tokens
            return ""
        self._decoded = len(self.tokens)
        self._text += piece
        found = self._matcher.feed(piece)
        final = len(self._text) - self._matcher.pending if found is None else found
        return self._release(final)

    def rest(self) -> str:
        """What is left to release once generation has ended: held-back text that no stop string completed, and the
        text of tokens still waiting for a character's last byte (without that unfinished character)."""
        if not self.stopped and self._decoded < len(self.tokens):
            piece = self.decode(self.tokens[self._decoded :])
            # Held back by add(): a character whose last bytes never came (generation ended first). Its first
            # bytes decode as U+FFFD, which is no text of the answer: leave them out.
            piece = piece.rstrip("\ufffd")
            self._decoded = len(self.tokens)
            self._text += piece
            self._matcher.feed(piece)
        return self._release(len(self.text()))

    def text(self) -> str:
        """The whole text so far, cut at the stop string (the characters of a split token still waiting left out)."""
        found = self._matcher.found
        return self._text if found is None else self._text[:found]

    def _release(self, final: int) -> str:
        piece = self._text[self.released : final]
        self.released = max(self.released, final)
        return piece
