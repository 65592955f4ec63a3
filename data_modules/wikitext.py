"""WikiText-103 (Salesforce/wikitext, wikitext-103-raw-v1): rows are lines; articles start at a ` = Title = ` row."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from data_modules.base import TokenDataModule
from data_modules.token_stream import (
    check_text_column,
    count_text,
    encode_documents,
    eval_windows,
    sample_windows,
    stream_dtypes,
    text_stats,
    train_windows,
)
from data_modules.tokenizer_setting import TokenizerSetting

_ARTICLE_TITLE = re.compile(r"^ = [^=].* = \n$")  # level-one heading; sections are ` = = Name = = `


def wikitext_articles(lines: Iterator[str]) -> Iterator[str]:
    """Joins line rows (each keeps its own newline) into whole articles."""
    article: list[str] = []
    for line in lines:
        if _ARTICLE_TITLE.match(line) and any(part.strip() for part in article):
            yield "".join(article)
            article = []
        article.append(line)
    if any(part.strip() for part in article):
        yield "".join(article)


class WikiText103(TokenDataModule):
    """WikiText-103 as one stream of tokens per split, articles separated by end-of-text, served as windows of
    `block_size` tokens.

    Args:
        path: Hugging Face dataset id, or a local folder in the hub's layout.
        name: the dataset's config name.
        text_column: the column holding the text lines.
        tokenizer: gpt2 (GPT-2's BPE, shipped), char (the characters of the training split, plus <|unk|>),
            bpe-N (a byte-level BPE of N tokens, trained on the training split with Hugging Face `tokenizers`),
            or the path of a checkpoint whose tokenizer to use. A trained one is cached beside the token caches
            and stored in every checkpoint. Unset: the one of --model.init_from (the CLI fills it in), else gpt2.
        **kwargs: see `TokenDataModule` (block_size, batch_size, num_workers, cache_dir, seed, splits).
    """

    sample = "Salesforce/wikitext"  # what --data.path sample reads (lightning_gpt/sample_data/)

    def __init__(
        self,
        path: str = "Salesforce/wikitext",
        name: str | None = "wikitext-103-raw-v1",
        text_column: str = "text",
        tokenizer: str | None = None,
        **kwargs,
    ) -> None:
        self.text_column = text_column
        self.required_columns = (text_column,)
        super().__init__(path=path, name=name, tokenizer_setting=TokenizerSetting(tokenizer), **kwargs)

    def cache_variant(self, role: str | None = None) -> tuple[str, ...]:
        return (f"text_column={self.text_column}",)

    def documents(self, rows) -> Iterator[str]:
        check_text_column(rows, self.text_column, self.path)
        # WikiText's own word count: whitespace-separated tokens plus one end-of-line per row (217,646 on the
        # validation split, as in Merity et al., 2016).
        return wikitext_articles(count_text(self._lines(rows), self.encode_stats, extra_words=1))

    def _lines(self, rows) -> Iterator[str]:
        for batch in rows.iter(batch_size=4096):
            yield from batch[self.text_column]

    # --- one stream of tokens, served as windows (data_modules/token_stream.py) -----------------------------------

    def array_dtypes(self):
        return stream_dtypes(self.vocab_size)

    def encode_rows(self, rows, split: str):
        yield from encode_documents(self.documents(rows), self.tokenizer, self.encode_stats)

    def train_dataset(self, base: Path, meta: dict):
        sampling = self.sampler_args(self.batch_size)
        dataset, sampler = train_windows(base, meta, self.block_size, sampling, self.splits["train"])
        return dataset, sampler, self.batch_size

    def train_sample_dataset(self, base: Path, meta: dict, batches: int):
        count = batches * self.eval_batch_size
        return sample_windows(base, meta, self.block_size, count, self.seed), self.eval_batch_size

    def eval_dataset(self, base: Path, meta: dict):
        return eval_windows(base, meta, self.block_size, self.tokenizer.eot_id), self.eval_batch_size

    def text_stats(self, role: str) -> dict | None:
        """Words, bytes and predicted tokens of a split (see `token_stream.text_stats`)."""
        return text_stats(self._cache(role)[1])
