"""Models from checkpoint files, for use outside the Trainer (generate, chat, serve, export, make-pairs, evaluation):
the device to run on, the language model and the tokenizer it was trained with, the reward model.

Plain PyTorch: rebuilding a model needs only the file (its weights and hyperparameters), so the commands that use
checkpoints start without importing Lightning. Every file is read weights-only (lightning_gpt/checkpoint_io.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_gpt.chat import is_chat
from lightning_gpt.checkpoint import model_config, stored_tokenizer
from lightning_gpt.checkpoint_io import load_checkpoint_file
from lightning_gpt.errors import UserInputError
from lightning_gpt.model import GPT
from lightning_gpt.reward_head import SCORE_HEAD, RewardModel
from lightning_gpt.tokenizer import AnyTokenizer


def available_devices() -> list[str]:
    """The --device values that work on this machine."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def resolve_device(device: str) -> str:
    """`auto` becomes cuda when a GPU is visible, else cpu; any other name must be a device this machine has.

    Raises:
        UserInputError: naming --device and the devices available, before any checkpoint is read (torch would
            otherwise fail inside the load, which reads like a bad checkpoint).
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    available = available_devices()
    if device in available:
        return device
    if not device.startswith("cuda"):
        reason = "not a device name this command knows"
    elif not torch.cuda.is_available():
        reason = "no CUDA GPU is available here"
    else:
        reason = f"this machine has {torch.cuda.device_count()} CUDA GPU(s)"
    raise UserInputError(f"--device {device}: {reason}; pass one of: {', '.join(available)}.")


def _build(make, checkpoint: dict, problem: str):
    """`make(config)` with the checkpoint's model settings, its weights loaded (a training module's state dict also
    holds the states of its metrics: only the model's own keys are read, all of them). A file that is not such a
    checkpoint raises UserInputError: `problem`, its "{reason}" replaced by why."""
    try:
        hparams, state = checkpoint["hyper_parameters"], checkpoint["state_dict"]
        if not isinstance(hparams, dict) or not isinstance(state, dict):
            raise TypeError("hyper_parameters and state_dict must be dictionaries")
        module = make(model_config(hparams))
        module.load_state_dict({key: state[key] for key in module.state_dict() if key in state})
    except (KeyError, TypeError, RuntimeError, UserInputError) as err:
        # replace, not format: the file's path may hold braces
        raise UserInputError(problem.replace("{reason}", f"{type(err).__name__}: {str(err)[:160]}")) from None
    return module


class _Wrapped(torch.nn.Module):
    """The GPT under the name a training checkpoint keeps it (`model.`)."""

    def __init__(self, config) -> None:
        super().__init__()
        self.model = GPT(config)


def load_checkpoint(path: str, device: str = "auto") -> tuple[GPT, AnyTokenizer]:
    """The model of a lightning-gpt checkpoint, in eval mode (bfloat16 on CUDA), and the tokenizer it was trained
    with.

    Only weights are unpickled (weights_only=True): a checkpoint holding other Python objects is refused, since
    loading those could run arbitrary code.

    Raises:
        UserInputError: for a bad --device or --ckpt_path, with what to do about it.
    """
    device = resolve_device(device)
    checkpoint = load_checkpoint_file(path, map_location=device)
    if SCORE_HEAD in checkpoint.get("state_dict", {}):
        raise UserInputError(
            f"--ckpt_path {path} is a reward model's checkpoint, which scores answers but does not write them; pass "
            "a language model's (pretraining, SFT or DPO)."
        )
    problem = (
        f"--ckpt_path {path} is not a lightning-gpt checkpoint ({{reason}}); pass one written by lightning-gpt fit."
    )
    model = _build(_Wrapped, checkpoint, problem).model.eval()
    if device.startswith("cuda"):
        model = model.to(torch.bfloat16)
    vocab = model.config.vocab_size
    tokenizer = stored_tokenizer(checkpoint)  # older checkpoints store none: told apart by vocabulary size
    if tokenizer is None:
        raise UserInputError(f"--ckpt_path {path}: a vocabulary of {vocab} tokens matches no known tokenizer.")
    if tokenizer.vocab_size > vocab:
        raise UserInputError(
            f"--ckpt_path {path}: its tokenizer has {tokenizer.vocab_size} tokens, more than the model's {vocab}."
        )
    return model, tokenizer


def load_reward_model(path: str, device: str = "cpu") -> tuple[RewardModel, AnyTokenizer]:
    """A reward checkpoint's model, in eval mode on `device` (bfloat16 on CUDA), and the chat tokenizer it was
    trained with (GPT-2's for checkpoints that store none).

    Raises:
        UserInputError: naming --reward_ckpt, when the file cannot be read or is not a reward model's checkpoint
            (a language model's, say).
    """
    checkpoint = load_checkpoint_file(path, map_location=device, flag="--reward_ckpt")
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or SCORE_HEAD not in state:
        raise UserInputError(
            f"--reward_ckpt {path} is not a reward model's checkpoint (it holds no score head); pass one written by "
            "lightning-gpt fit -c configs/reward_ultrafeedback.yaml."
        )
    problem = f"--reward_ckpt {path} is not a usable reward checkpoint ({{reason}})."
    reward = _build(RewardModel, checkpoint, problem).to(device).eval()
    if device.startswith("cuda"):
        reward = reward.to(torch.bfloat16)
    tokenizer = stored_tokenizer(checkpoint)
    if tokenizer is None or not is_chat(tokenizer) or tokenizer.vocab_size > reward.config.vocab_size:
        raise UserInputError(
            f"--reward_ckpt {path}: a vocabulary of {reward.config.vocab_size} tokens with no chat tokenizer; a reward "
            "model is trained from a chat (SFT) checkpoint."
        )
    return reward, tokenizer


def run_name(path: str) -> str:
    """The name of the run a checkpoint belongs to, as its folder tells (`runs/sft_ultrachat/main/checkpoints/
    last.ckpt` -> `sft_ultrachat`, `runs/sft_ultrachat/smoke/...` -> `sft_ultrachat-smoke`); else the file's stem."""
    parts = Path(path).parts
    if len(parts) >= 4 and parts[-2] == "checkpoints":
        name, version = parts[-4], parts[-3]
        return name if version == "main" else f"{name}-{version}"
    return Path(path).stem
