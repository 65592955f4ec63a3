"""Passages of the user's documents, each with the source it is cited by, and the system turn that shows them to the
model: what `--docs` retrieves and what `configs/sft_context.yaml` trains on, so both write the same turn."""

from __future__ import annotations

from dataclasses import dataclass

CONTEXT_HEADER = "Answer using these passages from the user's documents, and cite them by number."


@dataclass(frozen=True)
class Chunk:
    text: str
    source: str
    """Where the text comes from, as the answer cites it: "notes.md, lines 3-9"."""


def context_turn(system: str | None, passages: list[Chunk]) -> str | None:
    """The system turn that carries `passages`: the user's system message (if any), then the numbered passages."""
    if not passages:
        return system
    numbered = "\n\n".join(f"[{i}] ({c.source}) {c.text}" for i, c in enumerate(passages, start=1))
    return "\n\n".join(filter(None, [system, CONTEXT_HEADER, numbered]))


def source_list(passages: list[Chunk]) -> str:
    """The sources of an answer as printed under it, in the order the prompt numbers them."""
    return "; ".join(f"[{i}] {c.source}" for i, c in enumerate(passages, start=1))
