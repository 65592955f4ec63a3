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
from pathlib import Path

import numpy as np

from data_modules.base import TokenDataModule
from data_modules.chat_encoding import ChatEncoding
from data_modules.chat_messages import eval_chats, sample_chats, train_chats
from data_modules.holdout import held_out_rows
from data_modules.tokenizer_setting import TokenizerSetting
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


class ContextChats(TokenDataModule):
    """SQuAD-style question answering (`context`, `question`, `answers`, optional `title`) as chats with passages
    in the system turn; loss on the answers only.

    Args:
        path: Hugging Face dataset id, or a local folder in the hub's layout.
        distractors: how many other rows' passages join each row's passage in its system turn.
        train_split: the split trained on.
        val_split: the split validated on. None (the default): `val_fraction` of the train split's passages, held
            out with all their questions (a stable hash of the passage's text).
        test_split: the split tested on (`test` only).
        name: the dataset's config name, if any.
        messages_column: the column the chats built from each row are kept in (it only names them in the cache).
        max_bad_fraction: fail when more than this fraction of a split's rows is malformed.
        val_fraction: the share of the train split's passages held out for validation when `val_split` is None or
            the train split, each with all its questions. Picked by a stable hash of the passage's text: the same
            passages in every run, whatever the row order.
        tokenizer: the tokenizer, plus the chat tokens: gpt2, or the path of a checkpoint whose tokenizer to use.
            Unset: the one of --model.init_from (the CLI fills it in), else gpt2. Chat data trains none.
        **kwargs: see `TokenDataModule` (block_size, batch_size, num_workers, cache_dir, seed).
    """

    def __init__(
        self,
        path: str = "rajpurkar/squad",
        distractors: int = 2,
        train_split: str = "train",
        val_split: str | None = None,
        test_split: str = "validation",
        name: str | None = None,
        messages_column: str = "messages",
        max_bad_fraction: float = 0.5,
        val_fraction: float = 0.01,
        tokenizer: str | None = None,
        **kwargs,
    ) -> None:
        if distractors < 0:
            raise ValueError(f"distractors must be 0 or more, got {distractors}")
        self.distractors = distractors
        self.messages_column, self.max_bad_fraction = messages_column, max_bad_fraction
        self.required_columns = ("context", "question", "answers")
        self.holds_out, self.val_fraction = val_split in (None, train_split), val_fraction
        super().__init__(
            path=path,
            name=name,
            train_split=train_split,
            val_split=val_split or train_split,
            test_split=test_split,
            tokenizer_setting=TokenizerSetting(tokenizer, chat=True),
            **kwargs,
        )
        self.chats = ChatEncoding(messages_column, max_bad_fraction, max_tokens=self.block_size + 1)
        self.padding_waste: float | None = None

    # --- chats into a cache (data_modules/chat_encoding.py) ----------------------------------------------------

    def cache_variant(self, role: str | None = None) -> tuple[str, ...]:
        # Held out by passage (older caches held out by question: not reused).
        held_out_by = ("held_out_by=context",) if self.holdout_part(role) else ()
        variant = (*self.chats.variant(), *self.holdout_variant(role))
        return (*variant, f"distractors={self.distractors}", *held_out_by)

    def held_out_rows(self, rows) -> np.ndarray:
        """Which rows of the train split are validation rows: those whose passage's stable hash falls below
        `val_fraction` (see `data_modules.holdout`), so that all questions of a passage are on one side."""
        contexts = (c for batch in rows.select_columns(["context"]).iter(batch_size=1024) for c in batch["context"])
        return held_out_rows(contexts, self.val_fraction)

    def array_dtypes(self) -> dict[str, np.dtype]:
        return self.chats.array_dtypes(self.vocab_size)

    def encode_rows(self, rows, split: str):
        part, stats = self.holdout_part(self.encode_role), self.encode_stats
        held_out, chats = self.held_out_rows, self.conversations
        yield from self.chats.encode(rows, part, held_out, self.val_fraction, self.tokenizer, stats, chats)
        self.chats.check(stats, self.path, split, part, self.val_fraction)

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

    # --- batches of similar lengths, right-padded (data_modules/chat_messages.py) -----------------------------

    def train_dataset(self, base: Path, meta: dict):
        pad, sampling = self.tokenizer.eot_id, self.sampler_args(1)
        dataset, sampler, self.padding_waste = train_chats(
            base, meta, self.batch_size, self.seed, pad, self.block_size, sampling
        )
        return dataset, sampler, None

    def train_sample_dataset(self, base: Path, meta: dict, batches: int):
        pad = self.tokenizer.eot_id
        return sample_chats(base, meta, self.eval_batch_size, batches, self.seed, pad, self.block_size), None

    def eval_dataset(self, base: Path, meta: dict):
        return eval_chats(base, meta, self.eval_batch_size, self.tokenizer.eot_id, self.block_size), None
