"""Checks on the real WikiText-103 mirror in ../shared; skipped where it is absent."""

import numpy as np
import pytest

from data_modules import WikiText103
from tests.conftest import REAL_HUB

WIKITEXT = REAL_HUB / "Salesforce" / "wikitext"
pytestmark = pytest.mark.skipif(not WIKITEXT.is_dir(), reason="no ../shared/data/hub mirror here")


def test_real_validation_split_tokenizes_into_its_60_articles():
    dm = WikiText103(path=str(WIKITEXT), block_size=1024, batch_size=4, num_workers=0, val_split="validation")
    dm.setup("validate")
    tokens = np.asarray(dm.tokens("val"))
    assert (tokens == dm.tokenizer.eot_id).sum() == 60  # the split's 60 level-one titles
    assert 230_000 < len(tokens) < 260_000  # ~217k words; GPT-2 BPE gives ~1.1 tokens per word
    text = dm.tokenizer.decode(tokens[:20].tolist())
    assert text.startswith(" = Homarus gammarus = \n")


ULTRACHAT = REAL_HUB / "HuggingFaceH4" / "ultrachat_200k"


@pytest.mark.skipif(not ULTRACHAT.is_dir(), reason="no ../shared/data/hub mirror here")
def test_real_ultrachat_rows_are_all_usable_and_batch_with_little_padding():
    import json

    from data_modules import UltraChat200k
    from data_modules.token_cache import meta_path

    dm = UltraChat200k(path=str(ULTRACHAT), block_size=1024, batch_size=16, num_workers=0)
    dm.setup("fit")
    stats = json.loads(meta_path(dm.cache_base("train_sft")).read_text())["stats"]
    assert stats["rows"] == 700 and stats["skipped"] == 0
    dm.train_dataloader()
    assert dm.padding_waste < 0.05
