"""The SFT config compiles its model (configs/sft_ultrachat.yaml): chat batches of many widths must not recompile it
for each width, and inductor must handle the dynamic width (it does the GPU's work, so it runs here as on a GPU)."""

import shutil

import pytest
import torch
from torch._dynamo.utils import counters

from data_modules import UltraChat200k
from data_modules.chat_messages import WIDTH_MULTIPLE
from lightning_gpt.model import GPT, GPTConfig
from tests.conftest import bpe_tokenizer_checkpoint, conversation_texts, synthetic_conversations, write_hub_folder


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_chat_batches_of_many_widths_compile_two_graphs(tmp_path):
    rows = [row for turns in (1, 2, 4, 8) for row in synthetic_conversations(16, seed=turns, turns=turns)]
    for i, row in enumerate(rows):
        row["prompt_id"] = f"p{i}"
    folder = write_hub_folder(tmp_path / "chats", {"train_sft": rows, "test_sft": rows[:8]}, config="default")
    tokenizer = bpe_tokenizer_checkpoint(conversation_texts(folder), tmp_path / "bpe.ckpt")  # graphs, not the head
    dm = UltraChat200k(path=str(folder), block_size=512, batch_size=4, eval_batch_size=4, num_workers=0, seed=0,
                       tokenizer=tokenizer)  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    widths = {batch.inputs.shape[1] for batch in batches}
    assert len(widths) >= 3, widths  # the fixture must exercise several widths
    assert all(w % WIDTH_MULTIPLE == 0 for w in widths), widths

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=dm.vocab_size, block_size=512, n_layer=2, n_head=2, n_embd=32, dropout=0.1))
    model.compile()  # as GPTModule.configure_model compiles it: in place, inductor
    torch._dynamo.reset()
    counters.clear()
    for batch in batches:
        loss = model(batch.inputs, batch.targets)  # the training step's call
        loss.backward()
        assert torch.isfinite(loss)
    # One graph for the first width, one with the width dynamic for every other: not one per width.
    assert counters["stats"]["unique_graphs"] == 2, (widths, dict(counters["stats"]))
