import pytest

from lightning_gpt.chat import (
    ASSISTANT,
    END_OF_TURN,
    SYSTEM,
    USER,
    chat_tokenizer,
    fit_history,
    fit_to_length,
    message_problem,
    render_conversation,
    render_prompt,
)

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Bye!"},
]


def test_known_conversation_renders_to_exact_ids_and_mask():
    tok = chat_tokenizer()
    system, user, assistant, end = 50257, 50258, 50259, 50260
    assert [tok.token_id(t) for t in (SYSTEM, USER, ASSISTANT, END_OF_TURN)] == [system, user, assistant, end]
    ids, mask = render_conversation(tok, CONVERSATION)
    # GPT-2 ids: "Be"=3856 " brief"=4506 "."=13 "Hi"=17250 "!"=0 "Hello"=15496 "By"=3886 "e"=68
    assert ids == [
        50256,
        *(system, 3856, 4506, 13, end),
        *(user, 17250, 0, end),
        *(assistant, 15496, 13, end),
        *(user, 3886, 68, end),
        *(assistant, 3886, 68, 0, end),
    ]
    assert mask == [
        0,
        *(0, 0, 0, 0, 0),
        *(0, 0, 0, 0),
        *(0, 1, 1, 1),
        *(0, 0, 0, 0),
        *(0, 1, 1, 1, 1),
    ]


def test_mask_covers_exactly_the_assistant_text_and_its_end_tokens():
    tok = chat_tokenizer()
    ids, mask = render_conversation(tok, CONVERSATION)
    trained = [t for t, m in zip(ids, mask, strict=True) if m]
    assert tok.decode(trained) == "Hello.<|end|>Bye!<|end|>"
    assert trained.count(tok.token_id(END_OF_TURN)) == 2  # one per assistant turn, none for user/system


def test_prompt_ends_by_opening_an_assistant_turn():
    tok = chat_tokenizer()
    prompt = render_prompt(tok, CONVERSATION[:2])
    assert prompt[-1] == tok.token_id(ASSISTANT)
    assert tok.decode(prompt) == "<|endoftext|><|system|>Be brief.<|end|><|user|>Hi!<|end|><|assistant|>"


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}], "unknown role 'bot'"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}], "empty content"),
        ([{"role": "user", "content": "a"}], "no assistant turn"),
        ([{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}], "content is int"),
        ("hello", "not a non-empty list"),
        ([{"content": "a"}], "no string 'role'"),
        ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}], "'user' was expected"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "'assistant' was expected"),
    ],
)
def test_malformed_conversations_are_named(messages, reason):
    assert reason in message_problem(messages)


def test_good_conversations_pass():
    assert message_problem(CONVERSATION) is None
    assert message_problem(CONVERSATION[1:3]) is None


def test_long_conversation_is_split_at_turn_boundaries_with_the_system_turn_repeated():
    tok = chat_tokenizer()
    whole, _ = render_conversation(tok, CONVERSATION)
    pieces, dropped = fit_to_length(tok, CONVERSATION, max_tokens=len(whole) - 1)
    assert dropped == 0 and len(pieces) == 2
    first, second = (tok.decode(ids) for ids, _ in pieces)
    assert first == "<|endoftext|><|system|>Be brief.<|end|><|user|>Hi!<|end|><|assistant|>Hello.<|end|>"
    assert second == "<|endoftext|><|system|>Be brief.<|end|><|user|>Bye<|end|><|assistant|>Bye!<|end|>"
    fits, _ = fit_to_length(tok, CONVERSATION, max_tokens=len(whole))
    assert fits == [render_conversation(tok, CONVERSATION)]


def test_exchange_too_long_even_alone_is_dropped_and_counted():
    tok = chat_tokenizer()
    long_answer = [{"role": "user", "content": "Tell"}, {"role": "assistant", "content": "word " * 200}]
    pieces, dropped = fit_to_length(tok, CONVERSATION[1:3] + long_answer, max_tokens=40)
    assert dropped == 1
    assert [tok.decode(ids) for ids, _ in pieces] == ["<|endoftext|><|user|>Hi!<|end|><|assistant|>Hello.<|end|>"]


def test_chat_history_keeps_the_system_turn_and_drops_the_oldest_exchange():
    tok = chat_tokenizer()
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(6):
        messages += [{"role": "user", "content": f"question {i} " * 5}, {"role": "assistant", "content": "answer " * 5}]
    messages.append({"role": "user", "content": "last"})
    kept = fit_history(tok, messages, budget=60)
    assert kept[0]["role"] == "system" and kept[-1]["content"] == "last"
    assert len(kept) < len(messages) and kept[1]["role"] == "user"
