"""WikiText-103 (Salesforce/wikitext, wikitext-103-raw-v1): rows are lines; articles start at a ` = Title = ` row."""

from __future__ import annotations

import re
from collections.abc import Iterator

from data_modules.base import TokenDataModule
from lightning_gpt.errors import UserInputError

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
    """WikiText-103, tokenized once per split into a token cache, articles separated by end-of-text.

    Args:
        path: Hugging Face dataset id, or a local folder in the hub's layout.
        name: the dataset's config name.
        text_column: the column holding the text lines.
        **kwargs: see `TokenDataModule` (block_size, batch_size, num_workers, cache_dir, seed, splits).
    """

    def __init__(
        self,
        path: str = "Salesforce/wikitext",
        name: str | None = "wikitext-103-raw-v1",
        text_column: str = "text",
        **kwargs,
    ) -> None:
        self.text_column = text_column
        self.required_columns = (text_column,)
        super().__init__(path=path, name=name, **kwargs)

    def documents(self, rows) -> Iterator[str]:
        dtype = getattr(rows.features[self.text_column], "dtype", None)
        if dtype not in ("string", "large_string"):
            raise UserInputError(
                f"--data.path {self.path}: column {self.text_column!r} holds {rows.features[self.text_column]}, "
                "not text; set --data.text_column to the column with the text."
            )
        lines = (line for batch in rows.iter(batch_size=4096) for line in batch[self.text_column])
        return wikitext_articles(lines)
