"""Reading weights out of checkpoints: shape checks, and starting a fine-tuning run from a pretraining one."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lightning_gpt.chat import chat_tokenizer
from lightning_gpt.checkpoint_io import load_checkpoint_file
from lightning_gpt.errors import UserInputError
from lightning_gpt.model import GPT, GPTConfig
from lightning_gpt.tokenizer import AnyTokenizer, Tokenizer, describe, extends, tokenizer_from_data

log = logging.getLogger(__name__)


# The settings (hyperparameters) that shape the model, with their defaults: the training modules take them, and a
# checkpoint's hyper_parameters hold them, so inference rebuilds the model from the file alone.
MODEL_SETTINGS = {"preset": "gpt2-124m", "vocab_size": 50257, "block_size": 1024, "n_layer": None, "n_head": None,
                  "n_embd": None, "dropout": 0.0, "qk_norm": False, "mlp": "swiglu", "zero_init_proj": False,
                  "logit_softcap": None, "embed_shortcut": False}  # fmt: skip


def model_config(settings: dict) -> GPTConfig:
    """The GPTConfig that training settings (or a checkpoint's hyper_parameters) describe; other keys are ignored,
    and an unset n_layer / n_head / n_embd keeps the preset's."""
    values = {name: settings.get(name, default) for name, default in MODEL_SETTINGS.items()}
    shape = {k: values.pop(k) for k in ("n_layer", "n_head", "n_embd")}
    return GPTConfig.from_preset(values.pop("preset"), **values, **{k: v for k, v in shape.items() if v is not None})


def shape_mismatches(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between two state dicts' keys and shapes."""
    problems = [
        f"{k}: checkpoint {tuple(found[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and found[k].shape != v.shape
    ]
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing:
        problems.append(f"missing from checkpoint: {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    if unexpected:
        problems.append(f"not in model: {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}")
    return problems


def stored_tokenizer(checkpoint: dict) -> AnyTokenizer | None:
    """The tokenizer a checkpoint's model was trained with: the one it stores, or for checkpoints written before
    tokenizers were stored, GPT-2 (with the chat tokens where the vocabulary has them). None when unknown."""
    if "tokenizer" in checkpoint:
        return tokenizer_from_data(checkpoint["tokenizer"])
    vocab = checkpoint.get("hyper_parameters", {}).get("vocab_size")
    return next((t for t in (Tokenizer(), chat_tokenizer()) if t.vocab_size == vocab), None)


def tokenizer_of_checkpoint(path: str, flag: str) -> tuple[AnyTokenizer, int]:
    """The tokenizer a lightning-gpt checkpoint was trained with and its model's vocabulary size (at least the
    tokenizer's: a bpe-N whose text ran out of merges leaves rows unused). Reads the file memory-mapped."""
    if not Path(path).exists():
        raise UserInputError(
            f"{flag} {path}: neither a tokenizer (gpt2, char, bpe-N, e.g. bpe-8192) nor an existing checkpoint file."
        )
    checkpoint = load_checkpoint_file(path, flag=flag, mmap=True)
    vocab = checkpoint.get("hyper_parameters", {}).get("vocab_size")
    tokenizer = stored_tokenizer(checkpoint)
    if tokenizer is None or not isinstance(vocab, int):
        raise UserInputError(
            f"{flag} {path}: not a lightning-gpt checkpoint whose tokenizer is known; name one written by "
            "lightning-gpt fit, or a tokenizer kind (gpt2, char, bpe-N)."
        )
    return tokenizer, vocab


def check_init_tokenizer(checkpoint: dict, path: str, tokenizer: AnyTokenizer) -> AnyTokenizer | None:
    """Refuses to start from a checkpoint whose token ids mean other things than the data's: `tokenizer` must be the
    checkpoint's, perhaps plus special tokens after its own (the chat tokens). Returns the checkpoint's tokenizer."""
    stored = stored_tokenizer(checkpoint)
    if stored is not None and extends(tokenizer, stored):
        return stored
    trained = describe(stored) if stored is not None else "an unknown tokenizer"
    raise UserInputError(
        f"--model.init_from {path} was trained with {trained}, but --data.tokenizer gives {describe(tokenizer)}: "
        f"its token ids would mean other tokens. Leave --data.tokenizer unset (it then takes the tokenizer of "
        f"--model.init_from) or pass --data.tokenizer {path}."
    )


def check_resumed_tokenizer(checkpoint: dict, tokenizer: AnyTokenizer | None) -> None:
    """Refuses to resume (or evaluate) a checkpoint with data encoded by another tokenizer than the one it stores."""
    if tokenizer is None or "tokenizer" not in checkpoint:
        return
    stored = tokenizer_from_data(checkpoint["tokenizer"])
    if stored.fingerprint != tokenizer.fingerprint:
        raise UserInputError(
            f"the checkpoint (--ckpt_path) was trained with {describe(stored)}, but --data.tokenizer gives "
            f"{describe(tokenizer)}: its token ids would mean other tokens. Pass --data.tokenizer with the "
            "checkpoint's path to use its tokenizer."
        )


def load_pretrained(model: GPT, path: str, tokenizer: AnyTokenizer | None = None, role: str = "model") -> None:
    """Copies a checkpoint's weights into `model`. Rows of the token embedding for ids the checkpoint's tokenizer
    lacks (special tokens added since) start at the mean of its real rows, the usual init for new tokens.

    Args:
        model: the model to fill.
        path: the checkpoint (--model.init_from).
        tokenizer: the run's data tokenizer; when given, it must be the checkpoint's, perhaps plus special tokens
            (`check_init_tokenizer`).
        role: what `model` is to the run, for the log line (DPO loads its policy and its reference from one file).
    """
    checkpoint = load_checkpoint_file(path, flag="--model.init_from")
    found = {k.removeprefix("model."): v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("model.")}
    if not found:
        raise UserInputError(f"--model.init_from {path}: holds no lightning-gpt model weights.")
    old_vocab = checkpoint.get("hyper_parameters", {}).get("vocab_size", model.config.vocab_size)
    new_vocab = model.config.vocab_size
    new_rows = slice(old_vocab, new_vocab)
    if tokenizer is not None:
        new_rows = slice(check_init_tokenizer(checkpoint, path, tokenizer).vocab_size, tokenizer.vocab_size)
    expected = model.state_dict()
    for key in ("tok_emb.weight", "lm_head.weight"):  # the same tied matrix, listed under both names
        if key in found and found[key].shape[1:] == expected[key].shape[1:] and old_vocab <= new_vocab:
            rows = expected[key].clone()
            rows[: min(len(rows), len(found[key]))] = found[key][: len(rows)]
            rows[new_rows] = found[key][: new_rows.start].mean(dim=0)
            found[key] = rows
    problems = shape_mismatches(expected, found)
    if problems:
        raise UserInputError(
            f"--model.init_from {path} holds a model of another shape than this run's: "
            + "; ".join(problems)
            + ". Set --model.preset / n_layer / n_head / n_embd to the shape it was trained with."
        )
    model.load_state_dict(found)
    log.info("%s initialised from %s (vocabulary %d -> %d)", role, path, old_vocab, new_vocab)
