"""Tokenization throughput of `prepare_data` (join articles, batched multi-threaded BPE, streamed cache write)
against a naive loop that encodes one article at a time into a Python list, on the same loaded rows.

    python benchmarks/prepare.py [--path ../shared/data/hub/Salesforce/wikitext] [--split validation]

Throughput is MB of raw UTF-8 text per second. The last line is the ratio prepare_data / naive.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from data_modules import WikiText103
from data_modules.hf_loading import load_hf_split

DEFAULT = Path(__file__).resolve().parents[2] / "shared/data/hub/Salesforce/wikitext"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", default=str(DEFAULT))
    parser.add_argument("--split", default="validation")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        rows = load_hf_split(args.path, "wikitext-103-raw-v1", args.split, scratch)
        megabytes = sum(len(t.encode()) for t in rows["text"]) / 1e6
        dm = WikiText103(path=args.path, cache_dir=scratch, block_size=1024)

        ours, naive = [], []
        for repeat in range(args.repeats):
            start = time.perf_counter()
            meta = dm.encode_split(rows, args.split, Path(scratch) / f"bench-{repeat}")
            n_tokens = meta["arrays"]["tokens"]["length"]
            ours.append(megabytes / (time.perf_counter() - start))

            start = time.perf_counter()
            ids: list[int] = []
            for article in dm.documents(rows):
                ids.extend(dm.tokenizer.encode(article))
                ids.append(dm.tokenizer.eot_id)
            naive.append(megabytes / (time.perf_counter() - start))
            assert len(ids) == n_tokens, (len(ids), n_tokens)

    print(f"{args.split}: {megabytes:.2f} MB of text, {n_tokens:,} tokens")
    print(f"prepare_data (tokenize + write cache):  {max(ours):.2f} MB/s")
    print(f"naive one-article-at-a-time encode:     {max(naive):.2f} MB/s")
    print(f"ratio prepare_data / naive: {max(ours) / max(naive):.2f}")


if __name__ == "__main__":
    main()
