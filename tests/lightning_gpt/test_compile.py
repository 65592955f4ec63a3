"""The configs compile their model (`compile: true` in configs/pretrain_wikitext103.yaml and sft_ultrachat.yaml):
run through the CLI as a user runs them, compiled in place, and for SFT, chat batches of many widths must not
recompile the model for each width. Inductor does the GPU's work, so it runs here as on a GPU. One compiled run
covers both configs: they compile the same module the same way (GPTModule.configure_model); SFT adds the widths."""

import shutil

import pytest
import torch
from torch._dynamo.utils import counters

from data_modules import UltraChat200k
from data_modules.chat_messages import WIDTH_MULTIPLE
from lightning_gpt.cli import run
from tests.conftest import (
    SFT,
    bpe_tokenizer_checkpoint,
    conversation_texts,
    scalars,
    synthetic_conversations,
    write_hub_folder,
)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_the_sft_config_compiles_two_graphs_for_chat_batches_of_many_widths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [row for turns in (1, 2, 4, 8) for row in synthetic_conversations(16, seed=turns, turns=turns)]
    for i, row in enumerate(rows):
        row["prompt_id"] = f"p{i}"
    folder = write_hub_folder(tmp_path / "chats", {"train_sft": rows, "test_sft": rows[:8]}, config="default")
    tokenizer = bpe_tokenizer_checkpoint(conversation_texts(folder), tmp_path / "bpe.ckpt")  # graphs, not the head
    # The batches the run will see, read the same way: the fixture must exercise several widths.
    dm = UltraChat200k(path=str(folder), block_size=512, batch_size=4, eval_batch_size=4, num_workers=0, seed=1337,
                       val_fraction=0.1, tokenizer=tokenizer)  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    widths = {batch.inputs.shape[1] for batch in dm.train_dataloader()}
    assert len(widths) >= 3, widths
    assert all(w % WIDTH_MULTIPLE == 0 for w in widths), widths

    torch._dynamo.reset()
    counters.clear()
    # The SFT config as it is (compile, dropout 0.1, accumulate_grad_batches 2, workers, every callback), shrunk:
    # a tiny model in fp32 on the CPU, one pass over the 16 batches, then one validation.
    cli = run(["fit", "-c", SFT, "--data.path", str(folder), "--data.tokenizer", tokenizer,
               *("--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--model.preset", "tiny"),
               *("--model.n_embd", "32", "--model.block_size", "512", "--data.batch_size", "4"),
               *("--data.eval_batch_size", "4", "--data.num_workers", "2", "--data.val_fraction", "0.1"),
               *("--trainer.max_steps", "8", "--trainer.val_check_interval", "16", "--trainer.limit_val_batches", "1"),
               *("--trainer.num_sanity_val_steps", "0", "--trainer.log_every_n_steps", "1"),
               "--trainer.logger.init_args.version", "compiled"])  # fmt: skip
    assert cli.model.model._compiled_call_impl is not None  # compiled in place: same state-dict keys
    losses = scalars(tmp_path / "runs" / "sft_ultrachat" / "compiled", "train_loss")
    assert sorted(losses) == list(range(8)) and all(map(torch.isfinite, map(torch.tensor, losses.values())))
    val = scalars(tmp_path / "runs" / "sft_ultrachat" / "compiled", "val_loss")
    assert len(val) == 1 and all(map(torch.isfinite, map(torch.tensor, val.values())))
    # Training: one graph for the first width, one with the width dynamic for every other, not one per width;
    # validation (eval mode, no dropout): one more.
    assert counters["stats"]["unique_graphs"] == 3, (widths, dict(counters["stats"]))
