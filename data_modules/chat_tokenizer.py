"""`--data.tokenizer` of the chat DataModules (ChatMessages, UltraChat200k, UltraFeedback): the model's tokenizer
plus the chat tokens, never a new one.

Chat data fine-tunes a model that exists: its token ids must mean what they meant in pretraining. So the tokenizer
is not trained here; it is GPT-2's, or the one a checkpoint was trained with (`--data.tokenizer PATH.ckpt`, which the
CLI fills in from `--model.init_from` when the flag is left unset), with `<|system|> <|user|> <|assistant|> <|end|>`
added after its own ids where it lacks them.
"""

from __future__ import annotations

from lightning_gpt.chat import chat_tokenizer
from lightning_gpt.checkpoint import tokenizer_of_checkpoint
from lightning_gpt.errors import UserInputError
from lightning_gpt.tokenizer import AnyTokenizer, is_tokenizer_kind


class ChatTokenizerSetting:
    """Mixed into a chat DataModule before its TokenDataModule base: `build_tokenizer` and `planned_vocab_size` from
    `--data.tokenizer` (set `self.tokenizer_spec` with `use_tokenizer` before TokenDataModule.__init__)."""

    tokenizer_spec: str | None = None
    _base: tuple[AnyTokenizer, int] | None = None

    def use_tokenizer(self, spec: str | None) -> None:
        """None or gpt2: GPT-2's; a checkpoint's path: the tokenizer it was trained with. Both plus the chat tokens."""
        self.tokenizer_spec = spec
        if spec in (None, "gpt2"):
            self._base = None
        elif is_tokenizer_kind(spec):
            raise UserInputError(
                f"--data.tokenizer {spec}: chat data trains no tokenizer, it uses the one of the model it fine-tunes. "
                f"Pretrain with --data.tokenizer {spec}, then pass --model.init_from PRETRAIN.ckpt (its tokenizer is "
                "taken when --data.tokenizer is unset) or --data.tokenizer PRETRAIN.ckpt."
            )
        else:
            self._base = tokenizer_of_checkpoint(spec, flag="--data.tokenizer")

    def build_tokenizer(self) -> AnyTokenizer:
        return chat_tokenizer(self._base[0] if self._base else None)

    def planned_vocab_size(self) -> int:
        # At least the checkpoint's model vocabulary: a bpe-N that learned fewer than N ids leaves rows unused.
        own = self.tokenizer.vocab_size
        return max(own, self._base[1]) if self._base else own
