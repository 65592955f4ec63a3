"""--model.optimizer muon: Muon on the blocks' weight matrices and AdamW on the rest, as one optimizer inside
Lightning's automatic optimization, so accumulation, clipping, checkpoints and the exact resume work as with AdamW."""

import threading
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.optim._muon import _zeropower_via_newtonschulz

from lightning_gpt.cli import run
from lightning_gpt.training import muon
from lightning_gpt.training.muon import Muon, orthogonalized
from lightning_gpt.training.optim import MuonWithAdamW
from lightning_gpt.training.reward_model import RewardModule
from tests.conftest import quiet_cpu_trainer, tiny_language_model, tiny_wikitext_data

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
MUON = {"optimizer": "muon", "muon_learning_rate": 0.05}
SPECTRAL_FORM = muon._spectral_form


def test_muon_takes_the_blocks_matrices_and_adamw_everything_else(wikitext_dir):
    module = tiny_language_model(tiny_wikitext_data(wikitext_dir), embed_shortcut=True, **MUON)
    optimizer, _ = module.build_optimizer(total_steps=10)
    assert isinstance(optimizer, MuonWithAdamW)
    groups = {g["name"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    names = {id(p): n for n, p in module.named_parameters()}
    assert {names[i] for i in groups["muon"]} == {
        f"model.blocks.0.{w}.weight" for w in ("attn.qkv", "attn.proj", "mlp.gate", "mlp.up", "mlp.down")
    }
    assert {names[i] for i in groups["decayed"]} == {"model.tok_emb.weight"}  # = lm_head.weight, tied
    assert {names[i] for i in groups["not_decayed"]} == {
        "model.blocks.0.attn_norm.weight", "model.blocks.0.mlp_norm.weight", "model.norm.weight",
        "model.blocks.0.shortcut",
    }  # fmt: skip
    assert sum(len(g) for g in groups.values()) == len(names)  # every parameter once
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["muon"] == pytest.approx(0.05 / 3) and lrs["decayed"] == pytest.approx(1e-2 / 3)  # warmup step 0 of 2


def test_muon_takes_the_hidden_matrices_of_a_relu2_mlp_and_never_a_reward_models_score_head():
    module = RewardModule(preset="tiny", vocab_size=97, block_size=16, n_layer=2, n_embd=32, mlp="relu2", **MUON)
    optimizer, _ = module.build_optimizer(total_steps=10)
    names = {id(p): n for n, p in module.named_parameters()}
    groups = {g["name"]: {names[id(p)] for p in g["params"]} for g in optimizer.param_groups}
    assert groups["muon"] == {
        f"model.blocks.{i}.{w}.weight" for i in (0, 1) for w in ("attn.qkv", "attn.proj", "mlp.up", "mlp.down")
    }
    # The score head's (1, 32) weight is 2-D but no hidden matrix: one output, Muon would make it a unit vector.
    assert groups["decayed"] == {"model.tok_emb.weight", "score_head.weight"}
    assert "score_head.bias" in groups["not_decayed"]
    assert sum(len(g) for g in groups.values()) == len(names)


def test_on_the_cpu_the_step_is_torch_muons_in_float32(monkeypatch):
    spectral = []  # the matrices that took the spectral form, step by step
    monkeypatch.setattr(muon, "_spectral_form", lambda x, *a: spectral.append(x.shape) or SPECTRAL_FORM(x, *a))
    torch.manual_seed(0)
    shapes = [(48, 16), (16, 16), (16, 40), (384, 192), (192, 384)]  # the last two over SPECTRAL_FORM_MIN_WORK
    ours = [torch.nn.Parameter(torch.randn(s) * 0.1) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a = Muon(ours, lr=0.02, momentum=0.95, weight_decay=0.1)
    b = torch.optim.Muon(theirs, lr=0.02, momentum=0.95, weight_decay=0.1)  # bfloat16 Newton-Schulz
    for _ in range(3):
        grads = [torch.randn(s) for s in shapes]
        before = [p.detach().clone() for p in ours]
        for p, q, g in zip(ours, theirs, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        a.step()
        b.step()
        for p, q, old in zip(ours, theirs, before, strict=True):
            torch.testing.assert_close(a.state[p]["momentum_buffer"], b.state[q]["momentum_buffer"])
            # The same update up to bfloat16's rounding in torch's iteration (a few percent, as a whole).
            mine, torchs = p.detach() - old, q.detach() - old
            assert (mine - torchs).norm() < 0.03 * torchs.norm()
            p.data.copy_(q.data)  # go on from the same weights
    assert spectral == [(192, 384), (192, 384)] * 3  # the tall one transposed
    # Muon's point: without decay the update is lr times a matrix whose singular values are all near 1.
    p = torch.nn.Parameter(torch.randn(32, 64))
    p.grad = torch.randn(32, 64) @ torch.diag(torch.logspace(-3, 0, 64))  # badly conditioned
    before = p.detach().clone()
    Muon([p], lr=0.1, weight_decay=0.0).step()
    singular = torch.linalg.svdvals((before - p.detach()) / 0.1)
    assert singular.min() > 0.5 and singular.max() < 1.5


SHAPES = [(384, 192), (192, 384), (16, 40), (48, 16)]  # two over SPECTRAL_FORM_MIN_WORK, two under


def muon_steps(threads: int, steps: int = 2, autocast: bool = False) -> list[torch.Tensor]:
    """The weights after `steps` of Muon on SHAPES' matrices (the same start and gradients every call), with torch
    at `threads` intra-op threads, optionally under CPU bfloat16 autocast; torch's thread count is put back after."""
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=generator) * 0.1 for s in SHAPES]
    grads = [torch.randn(s, generator=generator) for s in SHAPES]
    params = [torch.nn.Parameter(w) for w in start]
    optimizer = Muon(params, lr=0.02, momentum=0.95, weight_decay=0.1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(steps):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                optimizer.step()
            assert torch.get_num_threads() == threads and count_in_a_new_thread() == threads
    finally:
        torch.set_num_threads(before)
    return [p.detach() for p in params]


def test_with_two_threads_the_matrices_go_side_by_side_and_the_step_is_the_same(monkeypatch):
    """The CPU step runs each matrix's update in its own thread, one intra-op thread each, when torch has two; the
    result is the step taken in turn, and torch's thread count, for this thread and threads started later, is what
    it was (muon_steps checks)."""
    calls = []  # (thread, its torch threads) of every spectral form
    spy = lambda x, *a: calls.append((threading.get_ident(), torch.get_num_threads())) or SPECTRAL_FORM(x, *a)  # noqa: E731
    monkeypatch.setattr(muon, "_spectral_form", spy)
    in_turn = muon_steps(threads=1)
    assert calls == [(threading.get_ident(), 1)] * 4  # 2 steps x 2 large matrices
    calls.clear()
    side_by_side = muon_steps(threads=2)
    assert len(calls) == 4 and all(thread != threading.get_ident() and count == 1 for thread, count in calls)
    for a, b in zip(in_turn, side_by_side, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_step_under_autocast_is_the_float32_step(threads):
    """Manual optimization may step inside the forward's autocast: the iteration stays float32, in turn as in
    threads (which start without autocast)."""
    for a, b in zip(muon_steps(threads, autocast=True), muon_steps(threads), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_an_error_in_one_thread_is_raised_and_the_thread_count_put_back(monkeypatch):
    def fails_on_the_wide_one(x, *a):
        if x.shape == (192, 384) and threading.current_thread() is not threading.main_thread():
            raise RuntimeError("LAPACK failed")
        return SPECTRAL_FORM(x, *a)

    monkeypatch.setattr(muon, "_spectral_form", fails_on_the_wide_one)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
        for p in params:
            p.grad = torch.randn_like(p)
        with pytest.raises(RuntimeError, match="LAPACK failed"):
            Muon(params, lr=0.02).step()
        assert torch.get_num_threads() == 2 and count_in_a_new_thread() == 2
    finally:
        torch.set_num_threads(before)


def count_in_a_new_thread() -> int:
    counts = []
    thread = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return counts[0]


def newton_schulz_float64(update: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """torch.optim.Muon's iteration (torch.optim._muon._zeropower_via_newtonschulz), written out in float64."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = update.double()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).float()


def low_rank_or_decaying(shape: tuple[int, int], spectrum: str) -> torch.Tensor:
    """A (m, n) update: gaussian ("full"), rank 2 plus 1e-4 noise ("rank2", a small batch's gradient), or singular
    values spread evenly over d decades ("decay{d}")."""
    m, n = shape
    if spectrum == "full":
        return torch.randn(m, n)
    if spectrum == "rank2":
        return torch.randn(m, 2) @ torch.randn(2, n) + 1e-4 * torch.randn(m, n)
    k = min(m, n)
    u, v = torch.linalg.qr(torch.randn(m, k))[0], torch.linalg.qr(torch.randn(n, k))[0]
    return (u * torch.logspace(-int(spectrum.removeprefix("decay")), 0, k)) @ v.T


def refuse(*args, **kwargs):
    raise AssertionError("this path must not run here")


@pytest.mark.parametrize("shape", [(48, 160), (160, 48), (64, 64), (96, 64), (181, 181)])
@pytest.mark.parametrize("spectrum", ["full", "rank2", "decay6"])
def test_small_matrices_take_torchs_iteration_in_float32(shape, spectrum, monkeypatch):
    monkeypatch.setattr(muon, "_spectral_form", refuse)  # 181 x 181: just under SPECTRAL_FORM_MIN_WORK
    torch.manual_seed(0)
    update = low_rank_or_decaying(shape, spectrum)
    got = orthogonalized(update, (3.4445, -4.7750, 2.0315), 5, 1e-7)
    torch.testing.assert_close(got, newton_schulz_float64(update), rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(128, 384), (384, 128), (182, 182)])
@pytest.mark.parametrize("spectrum", ["full", "rank2", "decay6", "decay8"])
def test_large_matrices_take_the_spectral_form_within_a_fiftieth_of_torchs_bfloat16_error(shape, spectrum, monkeypatch):
    # The spectral form rounds G = x x^T in float32, which blurs the directions of its smallest eigenvalues: a
    # relative error of up to 1.4e-3 on spectra spanning 6 to 8 decades. torch's bfloat16 iteration, its own on
    # every device, is 1e-2 to 0.9 off on these.
    monkeypatch.setattr(muon, "_iterated", refuse)  # 182 x 182: just over SPECTRAL_FORM_MIN_WORK
    torch.manual_seed(0)
    update = low_rank_or_decaying(shape, spectrum)
    expected = newton_schulz_float64(update)

    def error(got: torch.Tensor) -> float:
        return float((got - expected).norm() / expected.norm())

    ours = error(orthogonalized(update, (3.4445, -4.7750, 2.0315), 5, 1e-7))
    assert ours < 2e-3
    assert ours < error(_zeropower_via_newtonschulz(update, (3.4445, -4.7750, 2.0315), 5, 1e-7)) / 50


def test_a_non_finite_update_takes_torchs_iteration_and_stays_non_finite(monkeypatch):
    monkeypatch.setattr(muon, "_spectral_form", refuse)  # LAPACK may raise on it
    update = torch.randn(192, 192)
    update[3, 4] = float("nan")
    assert torch.isnan(orthogonalized(update, (3.4445, -4.7750, 2.0315), 5, 1e-7)).all()


class Losses(L.Callback):
    """Every micro-batch's loss by (epoch, batch index); with `stop_at`, a stop after that many optimizer steps."""

    def __init__(self, stop_at: int | None = None):
        self.losses, self.stop_at = {}, stop_at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[(trainer.current_epoch, batch_idx)] = float(outputs["loss"])
        if self.stop_at is not None:
            trainer.should_stop = trainer.global_step >= self.stop_at


# bf16 with two threads: the matrices side by side inside Lightning's step (precision plugin, accumulation, clipping)
@pytest.mark.parametrize(("precision", "threads"), [("32-true", 1), ("bf16-mixed", 2)])
def test_a_resume_restores_muons_state_and_continues_exactly(precision, threads, wikitext_dir, tmp_path, monkeypatch):
    workers = set()  # the threads that ran Muon's updates
    update = muon._muon_update
    monkeypatch.setattr(muon, "_muon_update", lambda *item: workers.add(threading.get_ident()) or update(*item))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        resume_exactly(precision, wikitext_dir, tmp_path)
    finally:
        torch.set_num_threads(before)
    if threads == 1:
        assert workers == {threading.get_ident()}
    else:  # fresh threads every step
        assert threading.get_ident() not in workers and len(workers) >= 2


def resume_exactly(precision, wikitext_dir, tmp_path):
    def fit(root, stop_at=None, ckpt_path=None):
        L.seed_everything(5)
        dm = tiny_wikitext_data(wikitext_dir, tokenizer="bpe-300")  # a small head: bf16 on a CPU is slow
        losses = Losses(stop_at)
        saves = ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=4)
        trainer = quiet_cpu_trainer(root, 8, [losses, saves], accumulate_grad_batches=2, gradient_clip_val=1.0,
                                    enable_checkpointing=True, precision=precision)  # fmt: skip
        module = tiny_language_model(dm, dropout=0.1, **MUON)
        trainer.fit(module, dm, ckpt_path=ckpt_path)
        return losses.losses, module, saves

    straight, finished, _ = fit(tmp_path / "a")
    first, _, saves = fit(tmp_path / "b", stop_at=4)
    assert len(first) == 8  # 4 optimizer steps of 2 micro-batches
    checkpoint = torch.load(saves.last_model_path, weights_only=True)
    state = checkpoint["optimizer_states"][0]
    assert [g["name"] for g in state["param_groups"]] == ["muon", "decayed", "not_decayed"]
    for index in state["param_groups"][0]["params"]:  # Muon's momentum for each matrix, AdamW's moments for the rest
        assert set(state["state"][index]) == {"momentum_buffer"} and state["state"][index]["momentum_buffer"].any()
    for group in state["param_groups"][1:]:
        for index in group["params"]:
            assert {"exp_avg", "exp_avg_sq", "step"} <= set(state["state"][index])
    resumed, after, _ = fit(tmp_path / "b", ckpt_path=saves.last_model_path)
    assert sorted(resumed) == sorted(straight)[8:] and len(resumed) == 8
    assert all(resumed[key] == straight[key] for key in resumed)
    for (name, a), b in zip(finished.named_parameters(), after.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_accumulated_micro_batches_take_one_muon_step_like_one_big_batch(wikitext_dir, tmp_path):
    def weights_after(batch_size, accumulate):
        L.seed_everything(0)
        dm = tiny_wikitext_data(wikitext_dir, batch_size=batch_size)
        module = tiny_language_model(dm, **MUON)
        quiet_cpu_trainer(tmp_path, 3, accumulate_grad_batches=accumulate).fit(module, dm)
        return {n: p.detach().clone() for n, p in module.named_parameters()}, module

    whole, module = weights_after(4, 1)
    accumulated, _ = weights_after(2, 2)
    start = tiny_language_model(tiny_wikitext_data(wikitext_dir), **MUON)  # moved, so the comparison means something
    qkv = "model.blocks.0.attn.qkv.weight"
    assert not torch.allclose(whole[qkv], dict(start.named_parameters())[qkv], atol=1e-3)
    for name, weight in whole.items():
        torch.testing.assert_close(accumulated[name], weight, rtol=1e-4, atol=1e-5, msg=name)


def first_step_gradients(module, optimizer) -> list[torch.Tensor]:
    """The gradient of each of the module's parameters in a first optimizer step, read back from the state it left:
    Muon's momentum buffer is (1 - momentum) g, AdamW's first moment (1 - beta1) g (the defaults: 0.95, 0.9)."""
    grads = []
    for p in module.parameters():
        state = optimizer.state[p]
        grads.append(state["momentum_buffer"] / 0.05 if "momentum_buffer" in state else state["exp_avg"] / 0.1)
    return grads


def global_norm(tensors: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors])))


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_clipping_scales_muons_and_adamws_gradients_as_one(optimizer, precision, wikitext_dir, tmp_path):
    # AdamW is torch's fused one (on the CPU as on CUDA), which Lightning's bf16-mixed refused to clip.
    settings = MUON if optimizer == "muon" else {}

    def gradients(clip):
        L.seed_everything(0)
        dm = tiny_wikitext_data(wikitext_dir)
        trainer = quiet_cpu_trainer(tmp_path, 1, gradient_clip_val=clip, precision=precision)
        module = tiny_language_model(dm, **settings)
        trainer.fit(module, dm)
        adamw = trainer.optimizers[0] if optimizer == "adamw" else trainer.optimizers[0].adamw
        assert all(group["fused"] for group in adamw.param_groups)
        return first_step_gradients(module, trainer.optimizers[0])

    clip = 1e-3
    free, clipped = gradients(None), gradients(clip)
    assert global_norm(free) > 10 * clip  # so the clip acts
    # One norm over every parameter, Muon's matrices and AdamW's rest together: each gradient shrinks by one factor.
    scale = clip / global_norm(free)
    assert global_norm(clipped) == pytest.approx(clip, rel=1e-4)
    for c, f in zip(clipped, free, strict=True):
        torch.testing.assert_close(c, f * scale, rtol=1e-4, atol=1e-9)


def test_under_bf16_mixed_muon_trains_the_float32_weights_as_32_true_does(wikitext_dir, tmp_path):
    def trained(precision):
        L.seed_everything(0)
        dm = tiny_wikitext_data(wikitext_dir)
        module = tiny_language_model(dm, **MUON)
        start = {n: p.detach().clone() for n, p in module.named_parameters()}
        trainer = quiet_cpu_trainer(tmp_path, 3, precision=precision, gradient_clip_val=1.0)
        trainer.fit(module, dm)
        return start, dict(module.named_parameters()), trainer.optimizers[0]

    start, full, _ = trained("32-true")
    _, mixed, optimizer = trained("bf16-mixed")
    muon = optimizer.param_groups[0]
    assert muon["name"] == "muon"
    assert all(optimizer.state[p]["momentum_buffer"].dtype == torch.float32 for p in muon["params"])
    matrices = {id(p) for p in muon["params"]}
    for name, weight in mixed.items():
        assert weight.dtype == torch.float32, name  # autocast computes in bfloat16; the weights stay float32
        if id(weight) in matrices:  # Muon moved them, by nearly what it moves them in float32
            moved = (full[name] - start[name]).norm()
            assert moved > 0.01 and (weight - full[name]).norm() < 0.1 * moved, name


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--model.optimizer", "sgd"), ("--model.muon_learning_rate", "0"), ("--model.muon_momentum", "1.5"),
     ("--model.muon_weight_decay", "-1")],
)  # fmt: skip
def test_bad_muon_settings_name_the_flag(flag, value, wikitext_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", "-c", str(CONFIGS / "pretrain_wikitext103.yaml"), "-c", str(CONFIGS / "smoke.yaml"),
             "--data.path", str(wikitext_dir), flag, value])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and flag in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
