"""The model (lightning_gpt/model.py): causal, tied and padded embeddings, the presets' sizes, the loss over scored
targets, and clear errors for bad settings."""

import pytest
import torch

from lightning_gpt.errors import UserInputError
from lightning_gpt.model import GPT, IGNORE_INDEX, GPTConfig


def tiny(**overrides) -> GPT:
    return GPT(GPTConfig.from_preset("tiny", **{"vocab_size": 97, "block_size": 16, **overrides}))


def test_changing_a_token_changes_no_earlier_logit():
    model = tiny().eval()
    idx = torch.randint(0, 97, (2, 16))
    t = 9
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % 97
    with torch.no_grad():
        before = model.logits(idx)
        after = model.logits(changed)
    torch.testing.assert_close(before[:, :t], after[:, :t])
    assert not torch.allclose(before[:, t:], after[:, t:])


def test_vocabulary_is_padded_to_a_multiple_of_64_and_embeddings_are_tied():
    model = tiny()
    assert model.config.padded_vocab_size == 128
    assert model.tok_emb.weight.shape == (128, 64)
    assert model.lm_head.weight is model.tok_emb.weight


@pytest.mark.parametrize(
    ("preset", "low", "high"),
    [
        ("small", 10e6, 30e6),
        ("gpt2-124m", 120e6, 128e6),
        ("gpt2-350m", 340e6, 370e6),
        ("gpt2-774m", 750e6, 800e6),
        ("gpt2-1.5b", 1.5e9, 1.6e9),
    ],  # fmt: skip
)
def test_presets_have_their_advertised_size(preset, low, high):
    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset(preset))
    assert low <= model.num_parameters() <= high


def test_gpt2_124m_has_gpt2_small_shape():
    config = GPTConfig.from_preset("gpt2-124m")
    assert (config.n_layer, config.n_embd, config.block_size, config.n_head) == (12, 768, 1024, 12)


def test_loss_skips_ignored_targets():
    model = tiny().eval()
    idx = torch.randint(0, 97, (1, 16))
    targets = idx.roll(-1, dims=1)
    with torch.no_grad():
        logits, full = model.logits(idx), model(idx, targets)
        masked = targets.clone()
        masked[:, 8:] = IGNORE_INDEX
        partial = model(idx, masked)
    expected = torch.nn.functional.cross_entropy(logits[0, :8], targets[0, :8], reduction="sum")
    torch.testing.assert_close(partial, expected)
    assert not torch.allclose(partial, full)


def test_sequence_longer_than_context_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        tiny().logits(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"n_embd": 63}, "divisible by n_head"), ({"n_head": 64}, "even"), ({"dropout": 1.5}, "dropout")],
)
def test_bad_config_values_name_the_field(overrides, message):
    with pytest.raises(UserInputError, match=message):
        GPTConfig.from_preset("tiny", **overrides)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(UserInputError, match="gpt2-124m"):
        GPTConfig.from_preset("huge")


@pytest.mark.parametrize("softcap", [None, 0.5])
def test_a_decoding_step_gives_the_last_positions_logits(softcap):
    # Decoding takes its own product on the CPU (weight @ x^T); the cap must hold there too (0.5: binding here).
    model = tiny(logit_softcap=softcap).eval()
    idx = torch.randint(0, 97, (2, 16))
    positions = torch.arange(16).expand(2, 16)
    mask = torch.ones(16, 16, dtype=torch.bool).tril()[None, None].expand(2, 1, 16, 16)
    with torch.no_grad():
        full = model.logits(idx)
        last = model.decode(idx, positions, None, mask)
    assert last.shape == (2, 97)  # the real vocabulary: the padding rows are dropped
    torch.testing.assert_close(last, full[:, -1])
    if softcap is not None:
        assert last.abs().max() < softcap
