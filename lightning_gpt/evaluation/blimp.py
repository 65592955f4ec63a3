"""BLiMP (Warstadt et al., 2020) without the harness: minimal pairs read from a folder in the hub's layout (one config
per paradigm, split `train`) and scored exactly as lm-evaluation-harness's `blimp_*` tasks score them, so that the
training callback needs neither lm-eval nor its task index. A test checks both give the same numbers.

The harness's definition: each sentence is a continuation of the empty context, which becomes the prefix token
(<|endoftext|>), written after the target delimiter " "; a pair is right when the good sentence's log-likelihood is
at least the bad one's (numpy's argmax takes the first on a tie); a paradigm's score is the mean over its pairs, and
BLiMP's the mean over paradigms (not weighted by size).
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning_gpt.errors import UserInputError
from lightning_gpt.evaluation.scoring import Request, choice_accuracy, loglikelihoods
from lightning_gpt.model import GPT
from lightning_gpt.tokenizer import AnyTokenizer

HUB_ID = "nyu-mll/blimp"


@dataclass
class Paradigm:
    name: str
    pairs: list[tuple[str, str]]  # (good, bad) sentences


def paradigm_names(path: str, flag: str) -> list[str]:
    """The configs (paradigms) a BLiMP copy declares in its README, in its order."""
    import datasets

    try:
        return list(datasets.get_dataset_config_names(path))
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        raise UserInputError(
            f"{flag} {path}: no BLiMP copy could be read there ({type(err).__name__}: {str(err)[:160]}); pass a "
            "folder in the hub's layout, e.g. ../shared/data/hub/nyu-mll/blimp."
        ) from None


def read_paradigms(path: str, limit: int | None, flag: str, names: list[str] | None = None) -> list[Paradigm]:
    """The first `limit` pairs of each paradigm (all with None) of the BLiMP copy at `path`."""
    from data_modules.hf_loading import load_hf_split

    paradigms = []
    for name in names or paradigm_names(path, flag):
        rows = load_hf_split(path, name, "train", flag=flag)
        if limit is not None:
            rows = rows.select(range(min(limit, len(rows))))
        paradigms.append(Paradigm(name, list(zip(rows["sentence_good"], rows["sentence_bad"], strict=True))))
    return paradigms


def pair_requests(tokenizer: AnyTokenizer, good: str, bad: str) -> list[Request]:
    """The harness's two requests for a pair: each sentence after the prefix token, with its leading space."""
    return [([tokenizer.eot_id], tokenizer.encode(" " + sentence)) for sentence in (good, bad)]


@dataclass
class EncodedBlimp:
    """BLiMP's requests, encoded once: two per pair (good, then bad), paradigm after paradigm."""

    names: list[str]
    sizes: list[int]  # pairs per paradigm
    requests: list[Request]


def encode_paradigms(tokenizer: AnyTokenizer, paradigms: list[Paradigm]) -> EncodedBlimp:
    paradigms = [p for p in paradigms if p.pairs]
    if not paradigms:
        raise UserInputError("the BLiMP copy holds no pairs to score.")
    requests = [r for p in paradigms for good, bad in p.pairs for r in pair_requests(tokenizer, good, bad)]
    return EncodedBlimp([p.name for p in paradigms], [len(p.pairs) for p in paradigms], requests)


def score_blimp(model: GPT, encoded: EncodedBlimp, batch_size: int = 64) -> dict[str, float]:
    """Accuracy of each paradigm, and `blimp`: their mean."""
    lls = [ll for ll, _ in loglikelihoods(model, encoded.requests, batch_size)]
    scores, at = {}, 0
    for name, size in zip(encoded.names, encoded.sizes, strict=True):
        right = [choice_accuracy(lls[at + 2 * k : at + 2 * k + 2], gold=0) for k in range(size)]
        scores[name] = sum(right) / size
        at += 2 * size
    scores["blimp"] = sum(scores[name] for name in encoded.names) / len(encoded.names)
    return scores
