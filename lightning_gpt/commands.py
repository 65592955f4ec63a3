"""`lightning-gpt generate`, `chat`, `evaluate-chat`, `make-pairs`, `export`, `serve` and `web`: using trained
checkpoints, outside the Trainer."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import replace

import torch

from lightning_gpt.chat import END_OF_TURN, SYSTEM, USER, message_problem, render_prompt
from lightning_gpt.chat_repl import HELP, ChatSession, run_chat
from lightning_gpt.checkpoint import module_from_checkpoint, stored_tokenizer
from lightning_gpt.checkpoint_io import load_checkpoint_file
from lightning_gpt.errors import UserInputError
from lightning_gpt.generate import SamplingSettings, generate, stream
from lightning_gpt.model import GPT
from lightning_gpt.retrieval import add_docs_args, index_from_args
from lightning_gpt.streamed_text import StreamedText
from lightning_gpt.tokenizer import Tokenizer


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


def load_checkpoint(path: str, device: str = "auto") -> tuple[GPT, Tokenizer]:
    """The model of a lightning-gpt checkpoint, in eval mode, and the tokenizer it was trained with.

    Only weights are unpickled (weights_only=True): a checkpoint holding other Python objects is refused, since
    loading those could run arbitrary code.

    Raises:
        UserInputError: for a bad --device or --ckpt_path, with what to do about it.
    """
    from lightning_gpt.lit_module import GPTModule
    from lightning_gpt.reward_model import SCORE_HEAD

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
    module = module_from_checkpoint(GPTModule, checkpoint, problem + ".")
    model = module.model.eval()
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


def is_chat(tokenizer: Tokenizer) -> bool:
    return END_OF_TURN in tokenizer.special_tokens


def chat_stop_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    """An answer ends at <|end|>; starting another turn or document also ends it."""
    return tuple(tokenizer.token_id(t) for t in (END_OF_TURN, USER, SYSTEM)) + (tokenizer.eot_id,)


def _sampling_args(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by lightning-gpt fit")
    parser.add_argument("--max_new_tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--repetition_penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None, help="fixes the sampled output")
    parser.add_argument("--stop", action="append", default=[], help="stop at this string (repeatable)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")


def checked_settings(**flags) -> SamplingSettings:
    """Sampling settings from command-line values, checked before any checkpoint is read (the stop ids come
    later, with the checkpoint's tokenizer).

    Raises:
        UserInputError: naming the flag, e.g. "--top_p must be in (0, 1], got 1.5".
    """
    try:
        return SamplingSettings(**flags)
    except ValueError as err:  # SamplingSettings' messages start with the field's name, which is the flag's
        raise UserInputError(f"--{err}") from None


def _settings(args) -> SamplingSettings:
    return checked_settings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop_strings=tuple(args.stop),
    )


def generate_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lightning-gpt generate", description="Continue a prompt.")
    _sampling_args(parser, max_new_tokens=200)
    parser.add_argument("--prompt", required=True)
    args = parser.parse_args(argv)
    settings = _settings(args)
    if not args.prompt:
        raise UserInputError("--prompt is empty; give some text to continue.")
    model, tokenizer = load_checkpoint(args.ckpt_path, args.device)
    prompt = tokenizer.encode(args.prompt)
    stop_ids = chat_stop_ids(tokenizer) if is_chat(tokenizer) else (tokenizer.eot_id,)
    settings = replace(settings, stop_ids=stop_ids)
    text = StreamedText(tokenizer.decode, settings.stop_strings)  # holds back what may start a stop string
    sys.stdout.write(args.prompt)
    for pairs in stream(model, [prompt], settings, decode=tokenizer.decode):
        sys.stdout.write(text.add(pairs[0][1]))
        sys.stdout.flush()
    sys.stdout.write(text.rest() + "\n")


def chat_command(argv: list[str], lines: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="lightning-gpt chat",
        description=f"Chat with a fine-tuned model. {HELP} When stdin is not a terminal, each line is one user message "
        "and each answer is printed on its own line.",
    )
    _sampling_args(parser, max_new_tokens=256)
    parser.add_argument("--system", default=None, help="a system message that opens the conversation")
    add_docs_args(parser)
    args = parser.parse_args(argv)
    settings = _settings(args)
    index = index_from_args(args)  # before the checkpoint: a problem with the documents shows at once
    model, tokenizer = load_checkpoint(args.ckpt_path, args.device)
    if not is_chat(tokenizer):
        raise UserInputError(
            f"--ckpt_path {args.ckpt_path} is a pretraining checkpoint without chat tokens; "
            "fine-tune it first (configs/sft_ultrachat.yaml) or use lightning-gpt generate."
        )
    settings = replace(settings, stop_ids=chat_stop_ids(tokenizer))
    session = ChatSession(model, tokenizer, settings, system=args.system, index=index, top_k=args.docs_top_k)
    run_chat(session, lines, interactive=lines is None and sys.stdin.isatty())


def opening_turns(
    tokenizer: Tokenizer, conversations: Iterable, limit: int
) -> tuple[list[list[int]], list[str], list[str]]:
    """Prompts (system turn if any, then the first user turn) and reference first answers of up to `limit`
    well-formed conversations, and why each malformed one met on the way was skipped."""
    prompts, references, problems = [], [], []
    for messages in conversations:
        problem = message_problem(messages)
        if problem is not None:
            problems.append(problem)
            continue
        opening = 2 if messages[0]["role"] == "system" else 1
        prompts.append(render_prompt(tokenizer, messages[:opening]))
        references.append(messages[opening]["content"])
        if len(prompts) == limit:
            break
    return prompts, references, problems


def _no_usable_rows(where: str, total: int, problems: list[str]) -> str:
    if not problems:
        return f"{where} has no rows; pass a split that holds conversations."
    return (
        f"{where}: all {total} conversations are malformed, so there is nothing to score (the first: "
        f"{problems[0]}). Pass a split in UltraChat's format: messages with an optional system turn, then user and "
        "assistant turns alternating, starting with the user."
    )


def evaluate_chat_command(argv: list[str]) -> dict:
    """ROUGE-L of generated first answers against UltraChat's reference answers."""
    from torchmetrics.text import ROUGEScore

    from data_modules.hf_loading import load_hf_split

    parser = argparse.ArgumentParser(
        prog="lightning-gpt evaluate-chat",
        description="ROUGE-L F1 (torchmetrics, no stemming) between the model's greedy answer to each sampled "
        "conversation's opening user turn (after its system turn, if any) and the reference first assistant turn.",
    )
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--data_path", default="HuggingFaceH4/ultrachat_200k")
    parser.add_argument("--split", default="test_sft")
    parser.add_argument("--num_samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="which conversations are sampled")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    for flag in ("num_samples", "batch_size"):
        if getattr(args, flag) <= 0:
            raise UserInputError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    settings = checked_settings(max_new_tokens=args.max_new_tokens, temperature=0)
    model, tokenizer = load_checkpoint(args.ckpt_path, args.device)
    if not is_chat(tokenizer):
        raise UserInputError(f"--ckpt_path {args.ckpt_path} has no chat tokens; evaluate-chat needs a chat model.")
    settings = replace(settings, stop_ids=chat_stop_ids(tokenizer))
    rows = load_hf_split(args.data_path, None, args.split, flag="--data_path")
    where = f"--data_path {args.data_path} split {args.split!r}"
    if "messages" not in rows.column_names:
        raise UserInputError(
            f"{where} has no 'messages' column (it has {rows.column_names}); pass a chat dataset in UltraChat's format."
        )
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(args.seed)).tolist()
    prompts, references, problems = opening_turns(tokenizer, (rows[i]["messages"] for i in order), args.num_samples)
    if not prompts:
        raise UserInputError(_no_usable_rows(where, len(rows), problems))
    if len(prompts) < args.num_samples:
        skipped = f" ({len(problems)} skipped as malformed; the first: {problems[0]})" if problems else ""
        print(
            f"lightning-gpt: warning: {where} has only {len(prompts)} usable conversations{skipped}, fewer than "
            f"--num_samples {args.num_samples}; the score averages over those {len(prompts)}.",
            file=sys.stderr,
        )
    rouge = ROUGEScore(rouge_keys="rougeL")
    for start in range(0, len(prompts), args.batch_size):
        outputs = generate(model, prompts[start : start + args.batch_size], settings)
        rouge.update([tokenizer.decode(o) for o in outputs], references[start : start + args.batch_size])
    result = {
        "rougeL_fmeasure": float(rouge.compute()["rougeL_fmeasure"]),
        "samples": len(prompts),
        "split": args.split,
        "max_new_tokens": args.max_new_tokens,
        "decoding": "greedy",
    }
    print(json.dumps(result))
    return result


def make_pairs_command(argv: list[str]) -> dict:
    """On-policy preference pairs: see lightning_gpt/make_pairs.py (imported here on use: it imports this module)."""
    from lightning_gpt.make_pairs import make_pairs_command as make_pairs

    return make_pairs(argv)


def export_command(argv: list[str]):
    """A Hugging Face model folder: see lightning_gpt/export.py (imported here on use: it needs transformers)."""
    from lightning_gpt.export import export_command as export

    return export(argv)


def serve_command(argv: list[str]) -> None:
    """An OpenAI-compatible HTTP server: see lightning_gpt/serve.py (imported here on use: it needs FastAPI)."""
    from lightning_gpt.serve import serve_command as serve

    serve(argv)


def web_command(argv: list[str]) -> None:
    """A chat page in the browser over serve's API: see lightning_gpt/web/ (imported here on use: it needs FastAPI)."""
    from lightning_gpt.web import web_command as web

    web(argv)


COMMANDS = {
    "generate": generate_command,
    "chat": chat_command,
    "evaluate-chat": evaluate_chat_command,
    "make-pairs": make_pairs_command,
    "export": export_command,
    "serve": serve_command,
    "web": web_command,
}
