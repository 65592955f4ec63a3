"""Entry point: `lightning-gpt fit|validate|test ...` (also `python -m lightning_gpt`)."""

from __future__ import annotations

import os
import sys

from lightning.pytorch.cli import LightningCLI

from data_modules.base import TokenDataModule
from lightning_gpt.errors import UserInputError
from lightning_gpt.lit_module import GPTModule


class GPTCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The model's context length sets the data windows; the data's tokenizer sets the vocabulary.
        parser.link_arguments("model.block_size", "data.init_args.block_size")
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")


def main(args: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        GPTCLI(
            GPTModule,
            TokenDataModule,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except UserInputError as err:
        print(f"lightning-gpt: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
