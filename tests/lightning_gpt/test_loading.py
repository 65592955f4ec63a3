"""Models from checkpoint files outside the Trainer (lightning_gpt/loading.py)."""

import pytest

from lightning_gpt.errors import UserInputError
from lightning_gpt.loading import load_reward_model
from lightning_gpt.training.language_model import GPTModule
from tests.conftest import TINY_CHAT, save_module


def test_loading_a_language_model_as_the_reward_model_names_the_flag(tmp_path):
    plain = save_module(GPTModule(**TINY_CHAT), tmp_path / "sft.ckpt")
    with pytest.raises(UserInputError, match=r"--reward_ckpt .*sft.ckpt is not a reward model's checkpoint"):
        load_reward_model(plain, "cpu")
    with pytest.raises(UserInputError, match=r"--reward_ckpt .*missing.ckpt is not a readable"):
        load_reward_model(str(tmp_path / "missing.ckpt"), "cpu")
