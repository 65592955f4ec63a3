"""Question answering over a passage (SQuAD's columns) as chats whose system turn holds passages the way `--docs`
puts them: fine-tuning on these teaches a chat model to answer from the passages it is given, and to cite them.

Each row becomes

    system:    the --docs context turn (lightning_gpt.passages.context_turn): the row's passage and `distractors`
               passages of other rows, numbered, the row's at a random place (fixed per row)
    user:      the question
    assistant: the answer, then the number of the passage it came from: "Denver Broncos [2]"

Distractors are what makes this retrieval training and not reading: the model has to find the passage that answers,
as it must when BM25 returns near misses.

Validation held out of the train split is held out by passage, not by question: SQuAD asks about five questions of
each passage, and a passage trained on would make its other questions a test of memory. The distractors of a chat
come from its own part's rows, so no validation passage is seen in training even beside another one.
"""

from __future__ import annotations

import random

import numpy as np

from data_modules.chat_messages import ChatMessages
from data_modules.holdout import held_out_rows
from lightning_gpt.passages import Chunk, context_turn


def context_conversation(passages: list[Chunk], gold: int, question: str, answer: str) -> list[dict]:
    """The chat for one question: `passages` in the system turn, the answer citing passage `gold` (from 0)."""
    cited = f"{answer} [{gold + 1}]" if answer.strip() else ""  # no answer: malformed, skipped and counted
    return [
        {"role": "system", "content": context_turn(None, passages)},
        {"role": "user", "content": question},
        {"role": "assistant", "content": cited},
    ]


def first_answer(answers) -> str:
    """SQuAD's answers are {"text": [...], "answer_start": [...]}; a plain string is taken as it is."""
    if isinstance(answers, dict):
        texts = answers.get("text") or [""]
        return texts[0]
    return answers or ""


class ContextChats(ChatMessages):
    """SQuAD-style question answering (`context`, `question`, `answers`, optional `title`) as chats with passages
    in the system turn; loss on the answers only.

    Args:
        path: Hugging Face dataset id, or a local folder in the hub's layout.
        distractors: how many other rows' passages join each row's passage in its system turn.
        train_split: the split trained on.
        val_split: the split validated on. None (the default): `val_fraction` of the train split's passages, held
            out with all their questions (a stable hash of the passage's text).
        test_split: the split tested on (`test` only).
        **kwargs: see `ChatMessages` (name, max_bad_fraction, val_fraction) and `TokenDataModule` (block_size,
            batch_size, num_workers, cache_dir, seed).
    """

    def __init__(
        self,
        path: str = "rajpurkar/squad",
        distractors: int = 2,
        train_split: str = "train",
        val_split: str | None = None,
        test_split: str = "validation",
        **kwargs,
    ) -> None:
        if distractors < 0:
            raise ValueError(f"distractors must be 0 or more, got {distractors}")
        self.distractors = distractors
        super().__init__(path=path, train_split=train_split, val_split=val_split, test_split=test_split, **kwargs)
        self.required_columns = ("context", "question", "answers")

    def cache_variant(self, role: str | None = None) -> tuple[str, ...]:
        # Held out by passage (older caches held out by question: not reused).
        held_out_by = ("held_out_by=context",) if self.holdout_part(role) else ()
        return (*super().cache_variant(role), f"distractors={self.distractors}", *held_out_by)

    def held_out_rows(self, rows) -> np.ndarray:
        """Which rows of the train split are validation rows: those whose passage's stable hash falls below
        `val_fraction` (see `data_modules.holdout`), so that all questions of a passage are on one side."""
        contexts = (c for batch in rows.select_columns(["context"]).iter(batch_size=1024) for c in batch["context"])
        return held_out_rows(contexts, self.val_fraction)

    def to_messages(self, batch: dict, indices: list[int]) -> dict:
        """The conversations of a batch of rows; distractors are the passages of the rows after each, in the batch
        (another passage than the row's own)."""
        contexts = batch["context"]
        titles = batch.get("title") or [f"passage {i}" for i in indices]
        conversations = []
        for i, row in enumerate(indices):
            picked: dict[str, str] = {}  # distinct passages, none the row's own (SQuAD asks several questions of one)
            for j in (k % len(contexts) for k in range(i + 1, i + len(contexts))):
                if len(picked) == self.distractors:
                    break
                if contexts[j] != contexts[i]:
                    picked.setdefault(contexts[j], titles[j])
            passages = [Chunk(text, title) for text, title in picked.items()]
            gold = random.Random(row).randint(0, len(passages))  # seeded by the row: the same chats in every run
            passages.insert(gold, Chunk(contexts[i], titles[i]))
            answer = first_answer(batch["answers"][i])
            conversations.append(context_conversation(passages, gold, batch["question"][i], answer))
        return {self.messages_column: conversations}

    def conversations(self, rows):
        """The chats of a part's rows (train or val, the other part's rows already left out: distractors are drawn
        from these rows only). Batches of 64 rows: neighbours in SQuAD share an article, so distractors are often
        near misses."""
        return rows.map(self.to_messages, batched=True, batch_size=64, with_indices=True, keep_in_memory=True)
