"""The speedrun's model settings (QK-norm, ReLU squared, zero-initialised projections, soft-capped logits, the
embedding shortcut): each computes what it says, keeps the model causal and its decoding consistent, travels in the
checkpoint, and is refused by the Llama export when Llama cannot represent it."""

import os

import pytest
import torch
import torch.nn.functional as F

from lightning_gpt.errors import UserInputError
from lightning_gpt.generate import SamplingSettings, generate
from lightning_gpt.loading import load_checkpoint
from lightning_gpt.model import GPT, IGNORE_INDEX, GPTConfig, _ReLUSquared
from lightning_gpt.tokenizer import Tokenizer
from lightning_gpt.training.language_model import GPTModule
from tests.conftest import save_module

VARIANTS = {
    "qk_norm": {"qk_norm": True},
    "relu2": {"mlp": "relu2"},
    "zero_init": {"zero_init_proj": True},
    "softcap": {"logit_softcap": 3.0},
    "shortcut": {"embed_shortcut": True},
    "all": {"qk_norm": True, "mlp": "relu2", "zero_init_proj": True, "logit_softcap": 3.0, "embed_shortcut": True},
}


def tiny(**settings) -> GPT:
    return GPT(GPTConfig.from_preset("tiny", **{"vocab_size": 97, "block_size": 16, **settings}))


def perturbed(model: GPT) -> GPT:
    """Every weight moved off its initial value (zero-initialised projections and the shortcut's (1, 0) too), so
    that no setting is tested only at its trivial start."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("name", VARIANTS)
def test_every_setting_keeps_the_model_causal(name):
    model = perturbed(tiny(**VARIANTS[name]))
    idx = torch.randint(0, 97, (2, 16))
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 97
    with torch.no_grad():
        before, after = model.logits(idx), model.logits(changed)
    torch.testing.assert_close(before[:, :9], after[:, :9])
    assert not torch.allclose(before[:, 9:], after[:, 9:])


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_decoding_gives_the_tokens_of_full_recomputation(name):
    model = perturbed(tiny(**VARIANTS[name]))
    prompts = [[5, 7, 11], [3, 1, 4, 1, 5, 9]]
    settings = SamplingSettings(max_new_tokens=8, temperature=0.0)
    with torch.no_grad():
        cached = generate(model, prompts, settings, use_cache=True)
        recomputed = generate(model, prompts, settings, use_cache=False)
    assert cached == recomputed and all(len(row) == 8 for row in cached)


@pytest.mark.parametrize("name", VARIANTS)
def test_the_training_loss_and_its_gradients_are_those_of_the_logits(name):
    """The chunked loss (training) against torch's cross-entropy over `logits`, the evaluation path."""
    model = perturbed(tiny(**VARIANTS[name])).train()
    idx, targets = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    loss = model(idx, targets)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    reference = F.cross_entropy(model.logits(idx).flatten(0, 1).float(), targets.flatten(), reduction="sum")
    reference.backward()
    torch.testing.assert_close(loss, reference)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize("n_embd", [64, 96, 384, 768])
def test_relu2_holds_as_many_parameters_as_swiglu(n_embd):
    with torch.device("meta"):
        swiglu = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=n_embd, vocab_size=97, block_size=16))
        relu2 = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=n_embd, vocab_size=97, block_size=16, mlp="relu2"))
    assert relu2.num_parameters() == swiglu.num_parameters()
    assert relu2.blocks[0].mlp.up.weight.shape == (3 * swiglu.config.mlp_hidden // 2, n_embd)
    assert not hasattr(relu2.blocks[0].mlp, "gate")


def test_relu2_is_down_of_relu_of_up_squared():
    mlp = tiny(mlp="relu2").blocks[0].mlp.eval()
    x = torch.randn(3, 64)
    expected = torch.clamp(x @ mlp.up.weight.T, min=0) ** 2 @ mlp.down.weight.T
    torch.testing.assert_close(mlp(x), expected)


def test_relu2s_gradients_are_autograds_own():
    """ReLU squared has its own backward (lightning_gpt.model._ReLUSquared); the reference is autograd's through
    torch's own ops, on inputs with negatives and exact zeros, and torch's numerical gradient check."""
    mlp = perturbed(tiny(mlp="relu2")).blocks[0].mlp
    x = torch.randn(3, 5, 64, requires_grad=True)
    grad = torch.randn(3, 5, 64)
    mlp(x).backward(grad)
    got = [t.grad.clone() for t in (x, mlp.up.weight, mlp.down.weight)]
    for t in (x, mlp.up.weight, mlp.down.weight):
        t.grad = None
    (torch.clamp(x @ mlp.up.weight.T, min=0) ** 2 @ mlp.down.weight.T).backward(grad)
    for a, t in zip(got, (x, mlp.up.weight, mlp.down.weight), strict=True):
        torch.testing.assert_close(a, t.grad)
    u = torch.tensor([-2.0, -0.5, 0.0, 0.0, 0.3, 1.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_ReLUSquared.apply, (u,))
    _ReLUSquared.apply(u).backward(torch.ones(6, dtype=torch.float64))
    assert u.grad.tolist() == [0.0, 0.0, 0.0, 0.0, 0.6, 3.0]
    v = torch.ones(6, dtype=torch.float64, requires_grad=True)  # a Hessian-vector product's way in
    (first,) = torch.autograd.grad(_ReLUSquared.apply(u), u, grad_outputs=v, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        first.sum().backward()  # not a silently wrong second derivative (r was saved outside the graph)


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    for qk_norm, blind in ((True, True), (False, False)):
        model = perturbed(tiny(qk_norm=qk_norm))
        idx = torch.randint(0, 97, (1, 16))
        with torch.no_grad():
            before = model.logits(idx)
            model.blocks[0].attn.qkv.weight[: 2 * 64] *= 4.0  # the query and key rows; values untouched
            after = model.logits(idx)
        assert torch.allclose(before, after, atol=1e-4) == blind, qk_norm


def test_zero_initialised_projections_make_every_block_start_as_the_identity():
    model = tiny(zero_init_proj=True).eval()
    for block in model.blocks:
        assert not block.attn.proj.weight.any() and not block.mlp.down.weight.any()
        assert block.attn.qkv.weight.std() > 0.01  # the other matrices keep their init
    idx = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        expected = model.lm_head(model.norm(model.tok_emb(idx)))[..., :97]
        torch.testing.assert_close(model.logits(idx), expected)
    default = tiny()
    assert float(default.blocks[0].attn.proj.weight.std()) == pytest.approx(0.02 / 2, rel=0.2)  # GPT-2 init, 2 layers


def test_softcap_bounds_the_logits_as_cap_times_tanh():
    capped = perturbed(tiny(logit_softcap=1.0))
    plain = tiny()
    plain.load_state_dict(capped.state_dict())  # the same weights: only the cap differs
    idx = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        z, raw = capped.logits(idx), plain.eval().logits(idx)
    assert raw.abs().max() > 1.5 and z.abs().max() < 1.0  # the cap bites, so the test is not vacuous
    torch.testing.assert_close(z, 1.0 * torch.tanh(raw / 1.0))


def test_the_embedding_shortcut_starts_as_the_plain_model_and_mixes_x0_when_learned():
    shortcut = perturbed(tiny(embed_shortcut=True))
    plain = tiny().eval()
    plain.load_state_dict({k: v for k, v in shortcut.state_dict().items() if not k.endswith("shortcut")})
    idx = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        for block in shortcut.blocks:
            block.shortcut.copy_(torch.tensor([1.0, 0.0]))
        torch.testing.assert_close(shortcut.logits(idx), plain.logits(idx))
        shortcut.blocks[1].shortcut.copy_(torch.tensor([0.5, 2.0]))
        # By hand: block 1's input is 0.5 x + 2 x0, x0 the embedding.
        x0 = shortcut.tok_emb(idx)
        cos, sin = shortcut.rope_cos[:16], shortcut.rope_sin[:16]
        x = shortcut.blocks[0](x0, x0, cos, sin)
        mixed = 0.5 * x + 2.0 * x0
        x = mixed + shortcut.blocks[1].attn(shortcut.blocks[1].attn_norm(mixed), cos, sin)
        x = x + shortcut.blocks[1].mlp(shortcut.blocks[1].mlp_norm(x))
        expected = shortcut.lm_head(shortcut.norm(x))[..., :97]
        torch.testing.assert_close(shortcut.logits(idx), expected)


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [({"mlp": "gelu"}, "mlp"), ({"logit_softcap": 0.0}, "logit_softcap"), ({"logit_softcap": -1.0}, "logit_softcap")],
)
def test_bad_settings_name_the_field(overrides, flag):
    with pytest.raises(UserInputError, match=flag):
        tiny(**overrides)


def test_a_checkpoint_rebuilds_the_model_with_its_settings_alone(tmp_path):
    settings = VARIANTS["all"]
    module = GPTModule(preset="tiny", vocab_size=Tokenizer().vocab_size, block_size=16, **settings)
    perturbed(module.model)
    path = save_module(module, tmp_path / "m.ckpt")
    model, _ = load_checkpoint(path, device="cpu")
    for name, value in settings.items():
        assert getattr(model.config, name) == value, name
    idx = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model.logits(idx), module.model.eval().logits(idx))


def test_a_checkpoint_from_before_the_settings_loads_as_the_plain_model(tmp_path):
    module = GPTModule(preset="tiny", vocab_size=Tokenizer().vocab_size, block_size=16)
    old = dict(module.hparams)
    for name in VARIANTS["all"]:
        old.pop(name)  # a checkpoint written before these settings existed
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": old}, path)
    model, _ = load_checkpoint(str(path), device="cpu")
    assert model.config.non_llama_settings() == [] and not model.config.zero_init_proj


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"qk_norm": True}, "qk_norm"),
        ({"mlp": "relu2"}, "mlp=relu2"),
        ({"logit_softcap": 15.0}, "logit_softcap"),
        ({"embed_shortcut": True}, "embed_shortcut"),
    ],
)
def test_export_refuses_a_model_llama_cannot_represent_in_one_line(settings, named, tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lightning_gpt.__main__ import main

    module = GPTModule(preset="tiny", vocab_size=Tokenizer().vocab_size, block_size=16, **settings)
    path = save_module(module, tmp_path / "m.ckpt")
    monkeypatch.setattr("sys.argv", ["lightning-gpt", "export", "--ckpt_path", path, "--out", str(tmp_path / "hf")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert named in err and "LlamaForCausalLM" in err
    assert sorted(os.listdir(tmp_path)) == ["m.ckpt"]  # nothing written


def test_export_maps_a_zero_initialised_model_exactly(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    from lightning_gpt.commands.export_model import export

    module = GPTModule(preset="tiny", vocab_size=Tokenizer().vocab_size, block_size=16, zero_init_proj=True)
    perturbed(module.model)
    export(save_module(module, tmp_path / "m.ckpt"), str(tmp_path / "hf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, module.model.logits(idx), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("whole", [True, False])
def test_compiled_loss_takes_whole_logits_below_the_bound_and_chunks_above_eager_always_chunks(whole, monkeypatch):
    import lightning_gpt.model as model_module

    torch._dynamo.reset()
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return model_module.chunked_cross_entropy_sum.__wrapped__(*args, **kwargs)

    counted.__wrapped__ = model_module.chunked_cross_entropy_sum
    monkeypatch.setattr(model_module, "chunked_cross_entropy_sum", counted)
    if not whole:
        monkeypatch.setattr(model_module, "WHOLE_LOGITS_MAX_BYTES", 0)
    settings = {"logit_softcap": 3.0, "mlp": "relu2", "qk_norm": True}  # relu2: its own autograd function, compiled
    eager = perturbed(tiny(**settings)).train()
    compiled = tiny(**settings)
    compiled.load_state_dict(eager.state_dict())
    # No graph break but the chunked loss's own (compiler.disable): ReLU squared's Function compiles.
    compiled.compile(fullgraph=whole)
    plain = tiny(**settings)
    plain.load_state_dict(eager.state_dict())
    idx, targets = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    targets[0, :3] = IGNORE_INDEX
    loss = compiled(idx, targets)
    assert bool(calls) != whole  # 2 x 16 rows of 128 float32 logits: 16 KiB, under the default bound
    calls.clear()
    eager_loss = eager(idx, targets)
    assert calls  # eager always takes the chunks: their in-place gradient is cheaper than torch's cross-entropy
    # The reference: torch's cross-entropy over the model's logits (soft-capped), summed over the scored targets.
    reference = F.cross_entropy(plain.logits(idx).flatten(0, 1), targets.flatten(), reduction="sum")
    for got in (loss, eager_loss):
        got.backward()
        torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-4)
    reference.backward()
    for model in (compiled, eager):
        for (name, a), b in zip(model.named_parameters(), plain.parameters(), strict=True):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)
