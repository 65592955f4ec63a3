"""The chat template: one renderer that training and chatting both use.

A conversation renders as

    <|endoftext|> [<|system|> text <|end|>] <|user|> text <|end|> <|assistant|> text <|end|> <|user|> ...

The leading <|endoftext|> is the document boundary the pretrained model already knows. The loss mask is 1 on the
assistant's text and on the <|end|> that closes each assistant turn (which is what teaches the model to stop), and
0 everywhere else, the role markers included: the prompt supplies those.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning_gpt.tokenizer import AnyTokenizer, Tokenizer

SYSTEM, USER, ASSISTANT, END_OF_TURN = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_SPECIAL_TOKENS = (SYSTEM, USER, ASSISTANT, END_OF_TURN)
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}


def chat_tokenizer(base: AnyTokenizer | None = None) -> AnyTokenizer:
    """`base` (default GPT-2 BPE) plus the four chat tokens, numbered after its own (GPT-2: ids 50257-50260, where
    the model's padded vocabulary already has rows)."""
    if base is None:
        return Tokenizer(extra_special_tokens=CHAT_SPECIAL_TOKENS)
    return base.with_special_tokens(name for name in CHAT_SPECIAL_TOKENS if name not in base.special_tokens)


def is_chat(tokenizer: AnyTokenizer) -> bool:
    """Whether the tokenizer has the chat tokens (a chat checkpoint's does; a pretraining one's does not)."""
    return END_OF_TURN in tokenizer.special_tokens


def chat_stop_ids(tokenizer: AnyTokenizer) -> tuple[int, ...]:
    """An answer ends at <|end|>; starting another turn or document also ends it."""
    return tuple(tokenizer.token_id(t) for t in (END_OF_TURN, USER, SYSTEM)) + (tokenizer.eot_id,)


def message_problem(messages) -> str | None:
    """Why a conversation cannot be trained on, or None when it can.

    Accepted: an optional system turn first, then user and assistant turns alternating, starting with the user,
    with at least one assistant turn; every content a non-empty string.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        return "messages is not a non-empty list"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"message {i} has no string 'role'"
        if message["role"] not in ROLE_TOKENS:
            return f"message {i} has unknown role {message['role']!r}"
        content = message.get("content")
        if not isinstance(content, str):
            return f"message {i} content is {type(content).__name__}, not a string"
        if not content.strip():
            return f"message {i} ({message['role']}) has empty content"
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            return (
                f"turn {i} is {message['role']!r} where {expected!r} was expected (system first, then user/assistant)"
            )
    if not any(m["role"] == "assistant" for m in turns):
        return "no assistant turn"
    return None


@dataclass
class RenderedTurn:
    ids: list[int]
    mask: list[int]
    role: str


def render_turns(tokenizer: Tokenizer, messages: list[dict]) -> list[RenderedTurn]:
    """Each message as role marker + text + end-of-turn, with its loss mask."""
    turns = []
    for message in messages:
        text = render_answer(tokenizer, message["content"])  # the text, then <|end|>
        ids = [tokenizer.token_id(ROLE_TOKENS[message["role"]]), *text]
        trained = message["role"] == "assistant"
        turns.append(RenderedTurn(ids, [0] + [int(trained)] * len(text), message["role"]))
    return turns


def render_answer(tokenizer: Tokenizer, text: str) -> list[int]:
    """An assistant answer as it follows a prompt (render_prompt ends with <|assistant|>): its text, then <|end|>.
    Preference pairs and make-pairs' scoring render answers with it."""
    return [*tokenizer.encode(text), tokenizer.token_id(END_OF_TURN)]


def render_conversation(tokenizer: Tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids of a whole conversation and its loss mask (1 where the token is a training target)."""
    ids, mask = [tokenizer.eot_id], [0]
    for turn in render_turns(tokenizer, messages):
        ids += turn.ids
        mask += turn.mask
    return ids, mask


def render_prompt(tokenizer: Tokenizer, messages: list[dict]) -> list[int]:
    """The ids that ask the model for the next assistant turn: the conversation so far, then <|assistant|>."""
    ids, _ = render_conversation(tokenizer, messages)
    return ids + [tokenizer.token_id(ASSISTANT)]


def fit_history(tokenizer: Tokenizer, messages: list[dict], budget: int) -> list[dict]:
    """The most recent turns whose prompt fits in `budget` tokens, the system turn always kept."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system) :]
    while len(turns) > 1 and len(render_prompt(tokenizer, system + turns)) > budget:
        turns = turns[2:] if len(turns) > 2 else turns[1:]  # drop the oldest user+assistant exchange
    return system + turns


def fit_to_length(
    tokenizer: Tokenizer, messages: list[dict], max_tokens: int
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Splits a conversation that is longer than `max_tokens` at turn boundaries, never inside an answer.

    Each piece is <|endoftext|>, the system turn (if any), then as many whole user+assistant exchanges as fit.
    An exchange that does not fit even alone is dropped. Returns the pieces (ids, mask) and the number of
    exchanges dropped.
    """
    turns = render_turns(tokenizer, messages)
    prefix_ids, prefix_mask = [tokenizer.eot_id], [0]
    if turns[0].role == "system":
        prefix_ids, prefix_mask = prefix_ids + turns[0].ids, prefix_mask + turns[0].mask
        turns = turns[1:]
    exchanges = [turns[i : i + 2] for i in range(0, len(turns), 2)]
    pieces: list[tuple[list[int], list[int]]] = []
    ids, mask, dropped = list(prefix_ids), list(prefix_mask), 0
    for exchange in exchanges:
        ex_ids = [t for turn in exchange for t in turn.ids]
        ex_mask = [m for turn in exchange for m in turn.mask]
        if len(prefix_ids) + len(ex_ids) > max_tokens:
            dropped += 1
            continue
        if len(ids) + len(ex_ids) > max_tokens:
            pieces.append((ids, mask))
            ids, mask = list(prefix_ids), list(prefix_mask)
        ids, mask = ids + ex_ids, mask + ex_mask
    if any(mask):
        pieces.append((ids, mask))
    return pieces, dropped
