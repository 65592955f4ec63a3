"""Weights read out of checkpoints (lightning_gpt/checkpoint.py): a pretraining checkpoint loaded into a chat model,
its chat-token rows started at the mean embedding."""

import torch

from lightning_gpt.chat import chat_tokenizer
from lightning_gpt.checkpoint import load_pretrained
from lightning_gpt.training.language_model import GPTModule


def test_init_from_loads_pretrained_weights_and_adds_chat_token_rows(pretrain_ckpt):
    pretrained = GPTModule.load_from_checkpoint(pretrain_ckpt).model.state_dict()
    module = GPTModule(preset="tiny", vocab_size=chat_tokenizer().vocab_size, block_size=64, n_layer=1, n_embd=32)
    load_pretrained(module.model, pretrain_ckpt)
    loaded = module.model.state_dict()
    for name, weight in pretrained.items():
        if name not in ("tok_emb.weight", "lm_head.weight"):
            assert torch.equal(loaded[name], weight), name
    emb, old = loaded["tok_emb.weight"], pretrained["tok_emb.weight"]
    assert torch.equal(emb[:50257], old[:50257])
    torch.testing.assert_close(emb[50257:50261], old[:50257].mean(0).expand(4, -1))
    assert module.model.lm_head.weight is module.model.tok_emb.weight  # still tied
