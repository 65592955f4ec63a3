"""--model.init_from in fit: the run starts from the pretrained weights, and a checkpoint it cannot use is refused by
name."""

import pytest

from lightning_gpt.errors import UserInputError
from tests.conftest import (
    LossRecorder,
    chat_data,
    tiny_module,
    trainer,
)


def test_init_from_fit_trains_from_the_pretrained_weights(pretrain_ckpt, ultrachat_dir, tmp_path):
    ckpt = pretrain_ckpt
    dm = chat_data(ultrachat_dir)
    scratch = trainer(tmp_path / "a", 1, limit_val_batches=None).validate(tiny_module(dm), dm, verbose=False)[0]
    recorder = LossRecorder()
    run = trainer(tmp_path / "b", 4, [recorder], limit_val_batches=None, val_check_interval=4)
    run.fit(tiny_module(dm, init_from=ckpt, learning_rate=1e-3), dm)
    first_loss = recorder.losses[0]
    assert first_loss < scratch["val_loss"] - 1.0  # starts from what pretraining learned, not from noise


def test_init_from_a_checkpoint_of_another_shape_is_refused(pretrain_ckpt, ultrachat_dir, tmp_path):
    ckpt = pretrain_ckpt
    dm = chat_data(ultrachat_dir)
    with pytest.raises(UserInputError, match=r"init_from .* another shape.*n_embd"):
        trainer(tmp_path / "b", 1).fit(tiny_module(dm, init_from=ckpt, n_embd=64), dm)


def test_init_from_a_missing_file_is_named(ultrachat_dir, tmp_path):
    dm = chat_data(ultrachat_dir)
    with pytest.raises(
        UserInputError, match=r"--model.init_from .*nope.ckpt is not a readable lightning-gpt checkpoint: no such file"
    ):
        trainer(tmp_path, 1).fit(tiny_module(dm, init_from=str(tmp_path / "nope.ckpt")), dm)
