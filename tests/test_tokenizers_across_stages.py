"""A tokenizer trained in pretraining (char, bpe-N) carries through the later stages: SFT and DPO read their data with
it plus the chat tokens, taken from --model.init_from; a tokenizer that would give the ids other meanings is refused."""

from pathlib import Path

import pytest
import torch

from data_modules import TextFiles, UltraChat200k, UltraFeedback
from data_modules.windows import LazyArray
from lightning_gpt.chat import CHAT_SPECIAL_TOKENS, USER, chat_tokenizer, render_conversation
from lightning_gpt.checkpoint import check_resumed_tokenizer, load_pretrained
from lightning_gpt.cli import run
from lightning_gpt.errors import UserInputError
from lightning_gpt.loading import load_checkpoint
from lightning_gpt.model import GPT
from lightning_gpt.tokenizer import BPETokenizer, extends, train_tokenizer
from lightning_gpt.training.language_model import GPTModule
from tests.conftest import (
    CONFIGS,
    WORDS,
    preference_folder,
    preference_rows,
    synthetic_conversations,
    unicode_corpus,
    write_hub_folder,
)

TEXT = "Hello, world! Привет, мир! 你好，世界！ 😀🚀 the cat sat on the mat.\n"
# The real configs shrunk in size only: their accumulation (4 or 2 batches a step), dropout and worker processes
# (2, as on a small machine) stay, so one step with a validation after 4 batches.
SMALL = [
    *("--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--model.preset", "tiny"),
    *("--model.block_size", "64", "--model.compile", "false", "--data.batch_size", "2", "--data.eval_batch_size", "4"),
    *("--data.num_workers", "2", "--trainer.max_steps", "1", "--trainer.val_check_interval", "4"),
    *("--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1"),
]


def fit(config: str, root: Path, *extra: str):
    return run(["fit", "-c", str(CONFIGS / config), *SMALL, "--trainer.logger.init_args.save_dir", str(root), *extra])


@pytest.fixture(scope="session")
def stages(tmp_path_factory) -> dict:
    """A bpe-2000 pretraining on a little text (too little for 2,000 ids: it learns fewer), then SFT from it with
    --data.tokenizer unset. {"root", "pretrain", "sft" (checkpoint paths), "cli" (the SFT run), "chat_data",
    "corpus"}."""
    root = tmp_path_factory.mktemp("stages")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(20):
        (corpus / f"doc{i}.txt").write_text(f"Document {i}. " + (TEXT + " ".join(WORDS)) * 8, encoding="utf-8")
    splits = {"train_sft": synthetic_conversations(40, seed=1), "test_sft": synthetic_conversations(8)}
    chat_data = write_hub_folder(root / "chat", splits, "default")
    fit("pretrain_text.yaml", root, "--data.path", str(corpus), "--data.tokenizer", "bpe-2000")
    (pretrain,) = root.glob("pretrain_text/**/last.ckpt")
    cli = fit("sft_ultrachat.yaml", root, "--data.path", str(chat_data), "--model.init_from", str(pretrain),
              "--data.val_fraction", "0.1", "--trainer.max_steps", "2")  # fmt: skip
    (sft,) = root.glob("sft_ultrachat/**/last.ckpt")
    return {"root": root, "pretrain": str(pretrain), "sft": str(sft), "cli": cli, "chat_data": chat_data,
            "corpus": corpus}  # fmt: skip


@pytest.mark.slow
def test_sft_from_a_bpe_pretraining_reads_its_data_with_that_tokenizer_plus_the_chat_tokens(stages):
    _, pretrained = load_checkpoint(stages["pretrain"], device="cpu")
    dm, model = stages["cli"].datamodule, stages["cli"].model
    assert isinstance(pretrained, BPETokenizer) and pretrained.vocab_size < 2000  # it ran out of merges
    assert dm.tokenizer_spec == stages["pretrain"]  # filled in from --model.init_from
    assert extends(dm.tokenizer, pretrained) and dm.tokenizer.vocab_size == pretrained.vocab_size + 4
    chat_ids = [dm.tokenizer.token_id(name) for name in CHAT_SPECIAL_TOKENS]
    assert chat_ids == [pretrained.vocab_size + i for i in range(4)]
    assert model.config.vocab_size == 2000  # the pretrained model's rows, the chat tokens among its unused ones
    base, meta = dm._cache("train")  # the encoded conversations
    ids = LazyArray(base, meta, "tokens").values
    lengths = LazyArray(base, meta, "lengths").values
    first = dm.tokenizer.decode(ids[: lengths[0]].tolist())
    assert first.startswith("<|endoftext|><|user|>") and "<|assistant|>" in first and first.endswith("<|end|>")
    assert ids.max() < dm.tokenizer.vocab_size
    # The SFT checkpoint carries the grown tokenizer: chat, generate and export need nothing else.
    _, stored = load_checkpoint(stages["sft"], device="cpu")
    assert stored.fingerprint == dm.tokenizer.fingerprint


@pytest.mark.slow
def test_dpo_data_takes_the_sft_checkpoints_tokenizer(stages, tmp_path):
    pairs = preference_folder(tmp_path / "pairs", preference_rows(24, seed=3))
    _, sft_tokenizer = load_checkpoint(stages["sft"], device="cpu")
    dm = UltraFeedback(path=str(pairs), tokenizer=stages["sft"], block_size=64, batch_size=2, num_workers=0)
    assert dm.tokenizer.fingerprint == sft_tokenizer.fingerprint  # no chat tokens added twice
    assert dm.vocab_size == 2000
    cli = fit("dpo_ultrafeedback.yaml", tmp_path, "--data.path", str(pairs), "--model.init_from", stages["sft"])
    assert cli.datamodule.tokenizer.fingerprint == sft_tokenizer.fingerprint and cli.trainer.global_step == 1


@pytest.mark.slow
def test_a_data_tokenizer_other_than_init_froms_is_refused_before_any_encoding(stages, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fit("sft_ultrachat.yaml", tmp_path, "--data.path", str(stages["chat_data"]), "--model.init_from",
            stages["pretrain"], "--data.tokenizer", "gpt2", "--data.cache_dir", str(tmp_path / "cache"))  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert f"--model.init_from {stages['pretrain']} was trained with bpe" in err
    assert "--data.tokenizer gives gpt2" in err and f"pass --data.tokenizer {stages['pretrain']}" in err
    assert not list((tmp_path / "cache").glob("ultrachat200k-*"))  # refused before the data was encoded


@pytest.mark.slow
def test_chat_data_trains_no_tokenizer_of_its_own(stages):
    for spec in ("char", "bpe-300"):
        with pytest.raises(UserInputError, match=f"--data.tokenizer {spec}: chat data trains no tokenizer"):
            UltraChat200k(path=str(stages["chat_data"]), tokenizer=spec)
    with pytest.raises(UserInputError, match="--data.tokenizer nope.ckpt: neither a tokenizer"):
        UltraChat200k(path=str(stages["chat_data"]), tokenizer="nope.ckpt")


@pytest.mark.slow
def test_validate_takes_the_tokenizer_of_the_ckpt_path_file(stages, tmp_path):
    cli = run(["validate", "-c", str(CONFIGS / "pretrain_text.yaml"), *SMALL, "--data.path", str(stages["corpus"]),
               "--trainer.logger.init_args.save_dir", str(tmp_path), "--ckpt_path", stages["pretrain"]])  # fmt: skip
    _, pretrained = load_checkpoint(stages["pretrain"], device="cpu")
    assert cli.datamodule.tokenizer.fingerprint == pretrained.fingerprint  # not GPT-2's, the default
    assert torch.isfinite(cli.trainer.callback_metrics["val_loss"])


@pytest.mark.slow
def test_text_data_can_take_a_checkpoints_tokenizer(stages, tmp_path):
    corpus = tmp_path / "more"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Новый текст. " * 50, encoding="utf-8")
    dm = TextFiles(path=str(corpus), tokenizer=stages["pretrain"], block_size=16)
    _, pretrained = load_checkpoint(stages["pretrain"], device="cpu")
    assert dm.tokenizer.fingerprint == pretrained.fingerprint and dm.vocab_size == 2000


@pytest.mark.parametrize("spec", ["char", "bpe-300"])
def test_chat_tokens_are_single_ids_and_typed_markers_stay_text(spec):
    chat = chat_tokenizer(train_tokenizer(spec, [TEXT * 5 + "<|>user"]))
    messages = [{"role": "user", "content": "Привет <|user|>"}, {"role": "assistant", "content": "你好 😀"}]
    ids, mask = render_conversation(chat, messages)
    user = chat.token_id(USER)
    assert ids.count(user) == 1 and ids[1] == user  # the marker: one id; the typed "<|user|>": ordinary text
    assert chat.decode(ids) == "<|endoftext|><|user|>Привет <|user|><|end|><|assistant|>你好 😀<|end|>"
    assert sum(mask) == len(chat.encode("你好 😀")) + 1


@pytest.mark.parametrize("spec, model_vocab", [("char", None), ("bpe-2000", 2000)])
def test_init_from_copies_the_rows_and_starts_the_chat_tokens_at_the_mean(spec, model_vocab, tmp_path):
    """bpe-2000 on this little text learns fewer ids: the model keeps 2,000 rows, the chat tokens take unused ones."""
    base = train_tokenizer(spec, [TEXT])
    old = GPTModule(preset="tiny", vocab_size=model_vocab or base.vocab_size, block_size=16)
    path = tmp_path / "base.ckpt"
    torch.save({"state_dict": old.state_dict(), "hyper_parameters": dict(old.hparams), "tokenizer": base.to_data()},
               path)  # fmt: skip
    chat = chat_tokenizer(base)
    model = GPT(GPTModule(preset="tiny", vocab_size=max(chat.vocab_size, model_vocab or 0), block_size=16).model.config)
    load_pretrained(model, str(path), tokenizer=chat)
    before, after = old.model.tok_emb.weight, model.tok_emb.weight
    n = base.vocab_size
    torch.testing.assert_close(after[:n], before[:n])
    torch.testing.assert_close(after[n : n + 4], before[:n].mean(dim=0).expand(4, -1))
    torch.testing.assert_close(after[n + 4 : len(before)], before[n + 4 :])  # rows no token uses: as they were
    other = chat_tokenizer(train_tokenizer(spec, ["other text"]))
    with pytest.raises(UserInputError, match=r"--model.init_from .* was trained with \w+ .* --data.tokenizer gives"):
        load_pretrained(model, str(path), tokenizer=other)


def test_a_resume_with_another_tokenizer_is_refused(tmp_path):
    bpe = train_tokenizer("bpe-300", [TEXT])
    checkpoint = {"tokenizer": chat_tokenizer(bpe).to_data()}
    check_resumed_tokenizer(checkpoint, chat_tokenizer(bpe))  # the same: fine
    with pytest.raises(UserInputError, match="the checkpoint .* was trained with bpe .* --data.tokenizer gives gpt2"):
        check_resumed_tokenizer(checkpoint, chat_tokenizer())


def test_make_pairs_refuses_a_reward_model_of_another_tokenizer(tmp_path):
    from lightning_gpt.__main__ import command_parser
    from lightning_gpt.commands import pair_sampling
    from lightning_gpt.loading import load_reward_model
    from lightning_gpt.training import RewardModule

    bpe_chat = chat_tokenizer(train_tokenizer("bpe-300", [TEXT]))
    paths = {}
    for name, module_class, tokenizer in (
        ("policy", GPTModule, chat_tokenizer()),
        ("reward", RewardModule, bpe_chat),
    ):
        module = module_class(preset="tiny", vocab_size=tokenizer.vocab_size, block_size=16)
        paths[name] = str(tmp_path / f"{name}.ckpt")
        torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                    "tokenizer": tokenizer.to_data()}, paths[name])  # fmt: skip
    assert load_reward_model(paths["reward"])[1].fingerprint == bpe_chat.fingerprint  # its own, not GPT-2's
    flags = ["--ckpt_path", paths["policy"], "--reward_ckpt", paths["reward"], "--data_path", str(tmp_path), "--out",
             str(tmp_path / "pairs")]  # fmt: skip
    args = command_parser("make-pairs")[1].parse_args(flags)
    with pytest.raises(UserInputError, match=r"--reward_ckpt .* was trained with bpe .* --ckpt_path .* with gpt2"):
        pair_sampling.load_models(args, "cpu")


@pytest.mark.slow
def test_the_checkpoint_alone_rebuilds_the_tokenizer(tmp_path, monkeypatch, capsys):
    from lightning_gpt.cli import run
    from lightning_gpt.loading import load_checkpoint
    from tests.conftest import command

    corpus = unicode_corpus(tmp_path / "corpus")
    monkeypatch.chdir(tmp_path)
    cli = run(
        [
            *("fit", "-c", str(CONFIGS / "pretrain_text.yaml"), "-c", str(CONFIGS / "smoke.yaml")),
            *("--data.path", str(corpus), "--data.tokenizer", "char", "--data.cache_dir", str(tmp_path / "cache")),
            *("--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--model.block_size", "32"),
        ]
    )
    dm = cli.datamodule
    assert cli.model.model.config.vocab_size >= dm.tokenizer.vocab_size == dm.vocab_size
    assert "val_bpb" in cli.trainer.callback_metrics  # bytes counted from the text: comparable across tokenizers
    (ckpt,) = tmp_path.glob("runs/**/last.ckpt")
    for path in (tmp_path / "cache").iterdir():  # nothing but the checkpoint
        path.unlink() if path.is_file() else None
    _, tokenizer = load_checkpoint(str(ckpt), device="cpu")
    text = (corpus / "doc3.txt").read_text(encoding="utf-8")
    assert type(tokenizer).__name__ == "CharTokenizer" and tokenizer.decode(tokenizer.encode(text)) == text
    capsys.readouterr()
    command("generate", ["--ckpt_path", str(ckpt), "--prompt", "Привет", "--max_new_tokens", "5", "--device", "cpu"])
    assert capsys.readouterr().out.startswith("Привет")


def test_a_resume_with_ckpt_path_last_takes_the_runs_tokenizer(tmp_path, monkeypatch):
    # A run on a char tokenizer, resumed by `--ckpt_path last` without --data.tokenizer (the flag left out, or an SFT
    # whose --model.init_from file is gone): the DataModule is built before the Trainer resolves "last", so it must
    # read the checkpoint's tokenizer itself, or the model gets GPT-2's vocabulary and the resume fails.
    corpus = unicode_corpus(tmp_path / "corpus")
    monkeypatch.chdir(tmp_path)
    # SMALL's accumulation and dropout; no worker processes (the tokenizer is decided before any loader exists).
    fit = ["fit", "-c", str(CONFIGS / "pretrain_text.yaml"), *SMALL, "--data.path", str(corpus), "--data.num_workers",
           "0", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]  # fmt: skip
    first = run([*fit, "--data.tokenizer", "char"])
    (last,) = tmp_path.glob("runs/**/checkpoints/last.ckpt")
    resumed = run([*fit, "--ckpt_path", "last", "--trainer.max_steps", "2"])  # one step further
    assert resumed.datamodule.tokenizer_spec == str(last)  # not the default, gpt2
    assert resumed.datamodule.vocab_size == first.datamodule.vocab_size < 1000
    assert resumed.model.config.vocab_size == first.model.config.vocab_size
    assert resumed.trainer.global_step == 2
