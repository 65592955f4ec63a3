"""WikiText-103 (Salesforce/wikitext, wikitext-103-raw-v1): rows are lines; articles start at a ` = Title = ` row."""

from __future__ import annotations

import re
from collections.abc import Iterator

from data_modules.token_stream import TokenStream

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


class WikiText103(TokenStream):
    """WikiText-103 as one stream of tokens per split, articles separated by end-of-text, served as windows of
    `block_size` tokens.

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

    def cache_variant(self, role: str | None = None) -> tuple[str, ...]:
        return (f"text_column={self.text_column}",)

    def documents(self, rows) -> Iterator[str]:
        self.check_text_column(rows)
        # WikiText's own word count: whitespace-separated tokens plus one end-of-line per row (217,646 on the
        # validation split, as in Merity et al., 2016).
        return wikitext_articles(self.count_text(self._lines(rows), extra_words=1))

    def _lines(self, rows) -> Iterator[str]:
        for batch in rows.iter(batch_size=4096):
            yield from batch[self.text_column]
