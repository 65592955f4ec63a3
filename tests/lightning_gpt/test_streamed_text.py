"""Streamed text with stop strings (what generate and chat print and serve sends): only final text is released
(the generate command's output: tests/lightning_gpt/commands/test_generate.py)."""

import random

import pytest

from lightning_gpt.streamed_text import StopMatcher, StreamedText
from lightning_gpt.tokenizer import Tokenizer


def pieces_decoder(pieces: list[str]):
    """Token i decodes to pieces[i]: a tokenizer whose tokens we choose."""
    return lambda ids: "".join(pieces[i] for i in ids)


def first_stop_by_hand(text: str, stops: list[str]) -> int | None:
    """Where the text ends: at the start of the first stop string to complete, reading character by character
    (the earliest start among those completing at the same character)."""
    for end in range(1, len(text) + 1):
        starts = [end - len(s) for s in stops if s and text[:end].endswith(s)]
        if starts:
            return min(starts)
    return None


def test_the_start_of_a_stop_string_is_held_back_until_it_is_settled():
    pieces = ["Answer:", " 42", "\n\n", "User", ":", " more"]
    text = StreamedText(pieces_decoder(pieces), ("\n\nUser:",))
    released = [text.add(i) for i in range(5)]
    assert released == ["Answer:", " 42", "", "", ""]  # "\n\nUser" is never shown: it became the stop string
    assert text.stopped and text.text() == "Answer: 42" and text.rest() == ""
    # The same start, not completed, is released as soon as it is settled (and at the end, what is left).
    text = StreamedText(pieces_decoder(["a\n\n", "Use", "d", "\n\nU"]), ("\n\nUser:",))
    assert [text.add(i) for i in range(4)] == ["a", "", "\n\nUsed", ""]
    assert text.rest() == "\n\nU" and not text.stopped


def test_released_text_matches_a_character_by_character_reading_on_random_cases():
    rng = random.Random(0)
    for _ in range(400):
        pieces = ["".join(rng.choice("ab") for _ in range(rng.randint(1, 3))) for _ in range(12)]
        stops = ["".join(rng.choice("ab") for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 3))]
        ids = [rng.randrange(12) for _ in range(rng.randint(1, 10))]
        text = StreamedText(pieces_decoder(pieces), stops)
        shown = ""
        for k, token in enumerate(ids, start=1):
            shown += text.add(token)
            so_far = "".join(pieces[i] for i in ids[:k])
            cut = first_stop_by_hand(so_far, stops)
            if cut is None:  # all but the longest ending that starts a stop string
                held = max((n for s in stops for n in range(1, len(s)) if so_far.endswith(s[:n])), default=0)
                assert shown == so_far[: len(so_far) - held], (pieces, stops, ids[:k])
            else:
                assert shown == so_far[:cut] and text.stopped
        whole = "".join(pieces[i] for i in ids)
        cut = first_stop_by_hand(whole, stops)
        assert shown + text.rest() == text.text() == whole[:cut]


def test_a_character_split_across_tokens_is_never_released_half():
    tokenizer = Tokenizer()
    line = "naïve 日本語 🙂 and ok"
    ids = tokenizer.encode(line)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # some token holds part of a character
    text = StreamedText(tokenizer.decode)
    released = [text.add(i) for i in ids]
    assert all("\ufffd" not in piece for piece in released)
    assert "".join(released) + text.rest() == line


def test_a_long_stop_string_is_matched_in_linear_time_and_found():
    stop = "ab" * 50_000 + "c"
    matcher = StopMatcher([stop])
    assert matcher.feed("ab" * 50_000) is None and matcher.pending == 100_000
    assert matcher.feed("x" + "ab" * 50_000) is None
    assert matcher.feed("c") == 100_001


@pytest.mark.parametrize("stops", [["x"], ["\n\nUser:", "Q:"]])
def test_without_a_stop_string_in_the_text_everything_is_released(stops):
    pieces = ["Hello", " world", "!"]
    text = StreamedText(pieces_decoder(pieces), stops)
    assert "".join(text.add(i) for i in range(3)) + text.rest() == "Hello world!" and not text.stopped
