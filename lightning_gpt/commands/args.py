"""The flags several commands share, each defined once: the checkpoint and its device, the sampling settings, the
documents to answer from. Light imports only: every command's `--help` builds on these."""

from __future__ import annotations

import argparse

from lightning_gpt.errors import UserInputError


def add_checkpoint(
    parser: argparse.ArgumentParser, what: str = "a checkpoint written by lightning-gpt fit", device: bool = True
) -> None:
    parser.add_argument("--ckpt_path", required=True, help=what)
    if device:
        parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")


def add_sampling(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    parser.add_argument("--max_new_tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--repetition_penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None, help="fixes the sampled output")
    parser.add_argument("--stop", action="append", default=[], help="stop at this string (repeatable)")


def checked_settings(**flags):
    """Sampling settings (lightning_gpt.generate.SamplingSettings) from command-line values, checked before any
    checkpoint is read (the stop ids come later, with the checkpoint's tokenizer).

    Raises:
        UserInputError: naming the flag, e.g. "--top_p must be in (0, 1], got 1.5".
    """
    from lightning_gpt.generate import SamplingSettings

    try:
        return SamplingSettings(**flags)
    except ValueError as err:  # SamplingSettings' messages start with the field's name, which is the flag's
        raise UserInputError(f"--{err}") from None


def sampling_settings(args: argparse.Namespace):
    """The settings of the flags `add_sampling` defines."""
    return checked_settings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop_strings=tuple(args.stop),
    )


def add_docs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--docs", default=None, help="a folder or glob of .txt, .md, .csv and .pdf files to answer from (BM25 search)"
    )
    parser.add_argument("--docs_top_k", type=int, default=3, help="how many passages each answer is given at most")
    parser.add_argument(
        "--docs_cache", default=None, help="where the index is cached (default $LIGHTNING_GPT_CACHE/docs)"
    )
    parser.add_argument("--docs_max_mb", type=float, default=20.0, help="a larger document file is not read")


def docs_index(args: argparse.Namespace):
    """The index (lightning_gpt.retrieval.index.DocumentIndex) that `--docs` asks for, or None without it.

    Raises:
        UserInputError: for a bad --docs_top_k, a missing extra, or documents with nothing to read.
    """
    if args.docs is None:
        return None
    if args.docs_top_k < 1:
        raise UserInputError(f"--docs_top_k must be a positive integer, got {args.docs_top_k}")
    if not args.docs_max_mb > 0:
        raise UserInputError(f"--docs_max_mb must be positive, got {args.docs_max_mb}")
    from lightning_gpt.retrieval.index import load_index

    return load_index(args.docs, args.docs_cache, max_bytes=int(args.docs_max_mb * 1_000_000))
