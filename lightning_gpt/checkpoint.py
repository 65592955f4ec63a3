"""Reading weights out of checkpoints: shape checks, and starting a fine-tuning run from a pretraining one."""

from __future__ import annotations

import inspect
import logging

import torch

from lightning_gpt.checkpoint_io import load_checkpoint_file
from lightning_gpt.errors import UserInputError
from lightning_gpt.model import GPT

log = logging.getLogger(__name__)


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


def load_pretrained(model: GPT, path: str) -> None:
    """Copies a checkpoint's weights into `model`. Rows of the token embedding that the checkpoint's vocabulary
    lacks (special tokens added since) start at the mean of its real rows, the usual init for new tokens."""
    checkpoint = load_checkpoint_file(path, flag="--model.init_from")
    found = {k.removeprefix("model."): v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("model.")}
    if not found:
        raise UserInputError(f"--model.init_from {path}: holds no lightning-gpt model weights.")
    old_vocab = checkpoint.get("hyper_parameters", {}).get("vocab_size", model.config.vocab_size)
    new_vocab = model.config.vocab_size
    expected = model.state_dict()
    for key in ("tok_emb.weight", "lm_head.weight"):  # the same tied matrix, listed under both names
        if key in found and found[key].shape[1:] == expected[key].shape[1:] and old_vocab <= new_vocab:
            rows = expected[key].clone()
            rows[: min(len(rows), len(found[key]))] = found[key][: len(rows)]
            rows[old_vocab:new_vocab] = found[key][:old_vocab].mean(dim=0)
            found[key] = rows
    problems = shape_mismatches(expected, found)
    if problems:
        raise UserInputError(
            f"--model.init_from {path} holds a model of another shape than this run's: "
            + "; ".join(problems)
            + ". Set --model.preset / n_layer / n_head / n_embd to the shape it was trained with."
        )
    model.load_state_dict(found)
    log.info("initialised from %s (vocabulary %d -> %d)", path, old_vocab, new_vocab)


def module_from_checkpoint(module_class, checkpoint: dict, problem: str):
    """A `module_class` (GPTModule or a subclass) with the checkpoint's model settings and weights, for use outside
    the Trainer: only GPTModule's settings are read (a DPO checkpoint's beta and the like are training settings),
    nothing is loaded from init_from and nothing is compiled.

    Raises:
        UserInputError: `problem` (which names the file and its flag), its "{reason}" replaced by why, when the file
            is a torch file but not such a module's checkpoint.
    """
    from lightning_gpt.lit_module import GPTModule  # it imports this module

    try:
        known = inspect.signature(GPTModule).parameters
        settings = {k: v for k, v in checkpoint["hyper_parameters"].items() if k in known}
        module = module_class(**{**settings, "init_from": None, "compile": False})
        module.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, RuntimeError, UserInputError) as err:
        # replace, not format: the file's path may hold braces
        raise UserInputError(problem.replace("{reason}", f"{type(err).__name__}: {str(err)[:160]}")) from None
    return module
