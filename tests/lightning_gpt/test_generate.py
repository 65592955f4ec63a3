import math

import pytest
import torch

from lightning_gpt.generate import SamplingSettings, generate, next_token, penalise_repeats, stream
from lightning_gpt.model import GPT, GPTConfig
from lightning_gpt.streamed_text import StreamedText

VOCAB = 97


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("tiny", vocab_size=VOCAB, block_size=64)).eval()


PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16]]


def greedy(**kw) -> SamplingSettings:
    return SamplingSettings(**{"max_new_tokens": 12, "temperature": 0.0, **kw})


def reference_greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding by re-running the plain forward on the whole sequence each step."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model.logits(torch.tensor([seq]))
            seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt) :]


def test_cached_greedy_equals_uncached_and_the_plain_forward(model):
    cached = generate(model, PROMPTS, greedy())
    assert cached == generate(model, PROMPTS, greedy(), use_cache=False)
    assert cached == [reference_greedy(model, p, 12) for p in PROMPTS]


def test_batched_prompts_of_different_lengths_match_one_at_a_time(model):
    settings = SamplingSettings(max_new_tokens=10, temperature=1.0, top_k=20, seed=3)
    alone = [generate(model, [p], greedy())[0] for p in PROMPTS]
    assert generate(model, PROMPTS, greedy()) == alone
    assert len(generate(model, PROMPTS, settings)[1]) == 10


def test_sampling_is_reproducible_for_a_seed(model):
    settings = SamplingSettings(max_new_tokens=16, temperature=1.0, seed=11)
    first = generate(model, PROMPTS, settings)
    assert generate(model, PROMPTS, settings) == first
    other = generate(model, PROMPTS, SamplingSettings(max_new_tokens=16, temperature=1.0, seed=12))
    assert other != first


def test_top_k_one_and_tiny_top_p_are_greedy(model):
    expected = generate(model, PROMPTS, greedy())
    assert generate(model, PROMPTS, greedy(temperature=1.0, top_k=1, seed=0)) == expected
    assert generate(model, PROMPTS, greedy(temperature=1.0, top_p=1e-6, seed=0)) == expected


def test_repetition_penalty_avoids_tokens_already_seen(model):
    out = generate(model, [[5, 6, 7]], greedy(max_new_tokens=8, repetition_penalty=1e6))[0]
    seen = [5, 6, 7]
    for token in out:
        assert token not in seen
        seen.append(token)


def test_stops_at_a_stop_id_without_emitting_it(model):
    full = generate(model, PROMPTS[:1], greedy())[0]
    stop = full[4]
    out = generate(model, PROMPTS[:1], greedy(stop_ids=(stop,)))[0]
    assert out == full[: full.index(stop)]


def test_stops_at_a_stop_string(model):
    full = generate(model, PROMPTS[:1], greedy())[0]

    def decode(ids):
        return "".join(f"<{i}>" for i in ids)

    stop_text = f"<{full[3]}>"
    out = generate(model, PROMPTS[:1], greedy(stop_strings=(stop_text,)), decode=decode)[0]
    assert out == full[: full.index(full[3]) + 1]
    text = StreamedText(decode, (stop_text,))
    shown = "".join(text.add(t) for t in out) + text.rest()
    assert shown == text.text() == decode(out)[: decode(out).index(stop_text)]


def test_stream_yields_each_token_as_it_comes(model):
    steps = list(stream(model, PROMPTS, greedy(max_new_tokens=5)))
    assert len(steps) == 5
    assert all(sorted(row for row, _ in step) == [0, 1, 2] for step in steps)
    assert [[t for r, t in step if r == 0] for step in steps] == [
        [t] for t in generate(model, PROMPTS, greedy(max_new_tokens=5))[0]
    ]


def test_a_prompt_longer_than_the_context_is_cut_from_the_left(model):
    long_prompt = list(range(1, 90))
    with pytest.warns(UserWarning, match="longer than the context"):
        out = generate(model, [long_prompt], greedy(max_new_tokens=1))[0]
    assert out == reference_greedy(model, long_prompt[-63:], 1)


def test_generation_stops_when_the_context_is_full(model):
    with pytest.warns(UserWarning, match="exceeds the context"):
        out = generate(model, [[1] * 60], greedy(max_new_tokens=20))[0]
    assert len(out) == 4


def test_a_short_prompt_gets_the_same_answer_batched_with_a_long_one(model):
    """The batch shares one cache, but not one length budget: evaluate-chat's scores must not depend on its
    --batch_size."""
    short, long = [1, 2, 3], list(range(1, 55))  # 64 positions: the long prompt leaves room for 10 new tokens
    with pytest.warns(UserWarning, match="exceeds the context"):
        together = generate(model, [short, long], greedy(max_new_tokens=30))
        alone = [generate(model, [prompt], greedy(max_new_tokens=30))[0] for prompt in (short, long)]
        uncached = generate(model, [short, long], greedy(max_new_tokens=30), use_cache=False)
    assert [len(out) for out in together] == [30, 10] and together == alone == uncached
    assert together[0] == reference_greedy(model, short, 30)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_p", 1.5),
        ("top_p", 0.0),
        ("top_p", math.nan),
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("temperature", -0.5),
        ("repetition_penalty", math.nan),
        ("repetition_penalty", math.inf),
        ("repetition_penalty", 0.0),
        ("top_k", 0),
        ("max_new_tokens", -1),
    ],
)
def test_bad_sampling_settings_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be .*, got {value}$"):
        SamplingSettings(**{field: value})


def test_repetition_penalty_reaches_a_seen_token_0_followed_by_padding():
    """Padding (-1) once wrote the unpenalised logit back over token 0's penalised one."""
    logits = torch.tensor([[2.0, 1.5, -1.0]])
    settings = SamplingSettings(temperature=0, repetition_penalty=2.0)
    assert next_token(logits, torch.tensor([[-1, -1]]), settings, None).tolist() == [0]
    assert next_token(logits, torch.tensor([[0, -1]]), settings, None).tolist() == [1]  # 2.0 / 2 < 1.5
    assert penalise_repeats(logits, torch.tensor([[-1, 0, -1]]), 2.0).tolist() == [[1.0, 1.5, -1.0]]


def test_padding_alone_never_penalises_token_0():
    logits = torch.tensor([[2.0, 1.5, -1.0], [-3.0, 0.5, 0.0]])
    seen = torch.tensor([[-1, -1, -1], [2, -1, -1]])
    assert penalise_repeats(logits, seen, 4.0).tolist() == [[2.0, 1.5, -1.0], [-3.0, 0.5, 0.0]]


def reference_penalty(logits: list[list[float]], seen: list[list[int]], penalty: float) -> list[list[float]]:
    """CTRL's penalty, one token at a time: each id seen at least once, padding (-1) skipped."""
    out = [list(row) for row in logits]
    for row, ids in zip(out, seen, strict=True):
        for i in {i for i in ids if i >= 0}:
            row[i] = row[i] / penalty if row[i] > 0 else row[i] * penalty
    return out


def test_repetition_penalty_equals_a_plain_python_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 11, generator=g)
    seen = torch.randint(0, 11, (6, 20), generator=g)  # duplicates on every row
    seen[:, -5:] = -1  # right-padding after real ids,
    seen[0, :4] = -1  # left-padding before them,
    seen[1, 0] = 0  # token 0 next to padding,
    seen[2] = -1  # and a row of padding only
    expected = reference_penalty(logits.tolist(), seen.tolist(), 2.0)  # a power of 2: exact in float32 too
    assert penalise_repeats(logits, seen, 2.0).tolist() == expected
    settings = SamplingSettings(temperature=0, repetition_penalty=2.0)
    assert next_token(logits, seen, settings, None).tolist() == torch.tensor(expected).argmax(-1).tolist()


def test_padding_never_turns_into_nan(model):
    """Left padding must stay finite inside the model, whatever the attention kernel does with empty rows."""
    from lightning_gpt.generate import _attention_mask

    valid = torch.tensor([[False, False, True, True], [True, True, True, True]])
    mask = _attention_mask(valid, 0, 4)
    x = torch.tensor([[0, 0, 5, 6], [1, 2, 3, 4]])
    positions = torch.tensor([[0, 0, 0, 1], [0, 1, 2, 3]])
    with torch.no_grad():
        logits = model.decode(x, positions, None, mask)
    assert torch.isfinite(logits).all()
    assert mask[0, 0, 0].tolist() == [True, False, False, False]  # a padding slot sees only itself
    assert mask[0, 0, 3].tolist() == [False, False, True, True]  # a real token never sees padding
