"""The command line, run in-process (LightningCLI with args=...), as a user types it."""

import pytest
import torch
import yaml

from lightning_gpt.cli import run
from tests.conftest import (
    CONFIGS,
    PRETRAIN,
    SMOKE,
    parse_only,
    preference_folder,
    preference_rows,
    squad_folder,
    text_folder,
)

SHORT = ["--trainer.max_steps", "6", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "2"]


def smoke_args(command, data_dir, *extra):
    return [command, "-c", PRETRAIN, "-c", SMOKE, "--data.path", str(data_dir), *extra]


# Overrides, not runs: smoke.yaml is composed below; the multi-GPU ones are tested in tests/test_multi_gpu_configs.py,
# the fast pretraining recipe below.
OVERRIDES = {"smoke.yaml", "multi_gpu.yaml", "fsdp.yaml", "pretrain_wikitext103_fast.yaml"}


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name not in OVERRIDES))
def test_every_config_parses_alone_and_with_smoke(config, wikitext_dir, ultrachat_dir, tmp_path):
    if "ultrafeedback" in config:  # preference pairs (reward model, DPO)
        data_dir = preference_folder(tmp_path / "ultrafeedback", preference_rows(24))
    elif "text" in config:  # your own text files
        data_dir = text_folder(tmp_path / "text", n=4)
    elif "context" in config:  # questions over passages (SQuAD's columns)
        data_dir = squad_folder(tmp_path / "squad")
    else:
        data_dir = ultrachat_dir if "ultrachat" in config else wikitext_dir
    for extra in (["--trainer.accelerator", "cpu"], ["-c", SMOKE]):
        cli = parse_only(["-c", str(CONFIGS / config), *extra, "--data.path", str(data_dir)])
        assert cli.datamodule.block_size == cli.model.config.block_size
        assert cli.model.config.vocab_size == cli.datamodule.vocab_size
    assert cli.trainer.accelerator.__class__.__name__ == "CPUAccelerator"


def test_the_fast_recipe_changes_the_model_settings_and_the_folder_only(wikitext_dir):
    base = ["-c", PRETRAIN, "--trainer.accelerator", "cpu", "--data.path", str(wikitext_dir)]
    plain = parse_only(base)
    fast = parse_only([*base[:2], "-c", str(CONFIGS / "pretrain_wikitext103_fast.yaml"), *base[2:]])
    changed = {k: v for k, v in fast.model.hparams.items() if plain.model.hparams[k] != v}
    assert changed == {"optimizer": "muon", "muon_learning_rate": 0.04, "learning_rate": 2e-3, "qk_norm": True,
                       "mlp": "relu2"}  # fmt: skip
    assert fast.trainer.logger.version == "fast" and plain.trainer.logger.version == "main"  # its own folder
    assert fast.trainer.logger.name == plain.trainer.logger.name
    assert fast.trainer.accumulate_grad_batches == plain.trainer.accumulate_grad_batches == 4


@pytest.mark.slow
def test_checkpoint_hyperparameters_win_over_the_command_line(wikitext_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # A 300-token BPE: GPT-2's vocabulary made this the slowest of the file; the later commands take it from the file.
    small = ("--data.tokenizer", "bpe-300", "--model.block_size", "64")
    run(smoke_args("fit", wikitext_dir, *small, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1"))
    last = str(tmp_path / "runs" / "pretrain_wikitext103" / "smoke" / "checkpoints" / "last.ckpt")
    cli = run(
        smoke_args(
            "validate", wikitext_dir, "--ckpt_path", last, "--model.n_embd", "128", "--trainer.limit_val_batches", "1"
        )
    )
    assert cli.model.config.n_embd == 64
    with pytest.raises(SystemExit) as exit_info:
        run(smoke_args("fit", wikitext_dir, "--ckpt_path", "last", "--model.n_embd", "128"))
    assert exit_info.value.code == 2


def test_gpu_config_without_a_gpu_says_what_to_do(wikitext_dir, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit):
        run(["fit", "-c", PRETRAIN, "--data.path", str(wikitext_dir)])
    assert "configs/smoke.yaml" in capsys.readouterr().err


def test_user_errors_print_one_line_without_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(smoke_args("fit", tmp_path / "missing"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lightning-gpt: error: --data.path" in err and "Traceback" not in err


@pytest.mark.parametrize("typo", [["--model.lerning_rate", "1e-3"], ["--trainer.max_stepz", "3"]])
def test_flag_typos_are_named(typo, wikitext_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_only(["-c", PRETRAIN, "--data.path", str(wikitext_dir), *typo])
    assert exit_info.value.code != 0
    assert typo[0].split(".")[-1] in capsys.readouterr().err


def test_config_file_typos_are_named(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  presett: tiny\n")
    with pytest.raises(SystemExit):
        parse_only(["-c", PRETRAIN, "-c", str(bad)])
    assert "presett" in capsys.readouterr().err


def test_print_config_prints_the_merged_config(wikitext_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(smoke_args("fit", wikitext_dir, "--print_config"))
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "lightning_gpt.training.GPTModule"  # the default model class
    assert printed["model"]["init_args"]["preset"] == "tiny"
    assert printed["model"]["init_args"]["block_size"] == 128
    assert printed["trainer"]["accelerator"] == "cpu"
    assert printed["data"]["init_args"]["path"] == str(wikitext_dir)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--model.learning_rate", "-1"),
        ("--model.learning_rate", "nan"),
        ("--model.block_size", "0"),
        ("--model.min_lr_ratio", "2"),
        ("--model.warmup_steps", "-5"),
    ],
)
def test_bad_model_settings_name_the_flag(flag, value, wikitext_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run(smoke_args("fit", wikitext_dir, flag, value))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and flag.split(".")[-1] in err and "Traceback" not in err
    assert "error:" in err  # ours, or jsonargparse's for a value that is not a number at all
