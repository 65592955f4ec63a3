"""A checkpoint as a Hugging Face model folder (`LlamaForCausalLM` + fast tokenizer): what `lightning-gpt export`
(lightning_gpt/commands/export.py) writes.

The model is Llama-shaped already (lightning_gpt/model.py), so export is a table of weight names plus one split:
the fused `qkv` rows are q, then k, then v. The folder loads with `AutoModelForCausalLM.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)`, without trust_remote_code.

Decisions:
- The vocabulary is cut to the real `vocab_size`: the rows padded to a multiple of 64 are never produced by the
  tokenizer, and the project's logits already leave them out (lightning_gpt/model.py), so a Hugging Face model
  without them computes the same logits, losses and samples.
- Weights stay float32 unless --dtype says otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lightning_gpt.atomic import atomic_folder, ordinary_mode
from lightning_gpt.chat import is_chat
from lightning_gpt.errors import UserInputError
from lightning_gpt.loading import load_checkpoint
from lightning_gpt.model import GPT, GPTConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Our per-layer weight names -> LlamaForCausalLM's ("{i}" is the layer). attn.qkv is split, see hf_state_dict.
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}
QKV_NAMES = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")
MODEL_NAMES = {"tok_emb.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
# lm_head.weight is tok_emb.weight (tied): tie_word_embeddings=True restores it.


def hf_state_dict(model: GPT, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """`model`'s weights under LlamaForCausalLM's names, the embedding cut to the real vocabulary."""
    c = model.config
    ours = model.state_dict()
    out = {hf: ours[name] for name, hf in MODEL_NAMES.items()}
    out["model.embed_tokens.weight"] = out["model.embed_tokens.weight"][: c.vocab_size]  # (vocab, C)
    for i in range(c.n_layer):
        prefix = f"blocks.{i}."
        for name, hf in LAYER_NAMES.items():
            out[f"model.layers.{i}.{hf}"] = ours[prefix + name]
        q, k, v = ours[prefix + "attn.qkv.weight"].split(c.n_embd, dim=0)  # each (C, C): rows are outputs
        for hf, weight in zip(QKV_NAMES, (q, k, v), strict=True):
            out[f"model.layers.{i}.{hf}"] = weight
    return {name: t.detach().to(dtype).contiguous() for name, t in out.items()}


def llama_config(config: GPTConfig, stop_ids: list[int], bos_id: int, dtype: torch.dtype):
    """A LlamaConfig with every field that differs from Llama's defaults (and the ones that must not) spelled out."""
    from transformers import LlamaConfig

    hf = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        intermediate_size=config.mlp_hidden,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_head,
        head_dim=config.head_size,
        hidden_act="silu",
        max_position_embeddings=config.block_size,
        rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_base,
        rope_scaling=None,
        tie_word_embeddings=True,
        attention_bias=False,
        attention_dropout=0.0,
        mlp_bias=False,
        bos_token_id=bos_id,
        eos_token_id=stop_ids[0],
        pad_token_id=bos_id,
        torch_dtype=dtype,
        architectures=["LlamaForCausalLM"],
    )
    rope = getattr(hf, "rope_parameters", None) or {"rope_theta": hf.rope_theta}  # transformers 5 moved it
    if rope["rope_theta"] != config.rope_base:
        raise RuntimeError(f"LlamaConfig kept rope_theta {rope['rope_theta']}, not {config.rope_base}")
    return hf


def generation_config(config: GPTConfig, stop_ids: list[int], bos_id: int):
    """The defaults of `lightning-gpt generate`: temperature 0.8, no top-k or top-p, stop at the stop ids."""
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=bos_id,
        eos_token_id=stop_ids,
        pad_token_id=bos_id,
        do_sample=True,
        temperature=0.8,
        top_k=0,
        top_p=1.0,
    )  # no max_length: with it, every generate(max_new_tokens=...) warns that both are set


def check_llama_shaped(config: GPTConfig, ckpt_path: str) -> None:
    """A model with settings Llama's block has no place for (QK-norm, ReLU squared, ...) is refused: exported, it
    would load and compute other logits."""
    unsupported = config.non_llama_settings()
    if unsupported:
        raise UserInputError(
            f"--ckpt_path {ckpt_path}: its model uses {', '.join(unsupported)}, which LlamaForCausalLM cannot "
            "represent; export takes models trained without these settings."
        )


def check_out_dir(out: str) -> Path:
    """--out must not exist, or be an empty folder: export never writes over anything."""
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserInputError(
            f"--out {out} already exists and is not empty; pass a new folder (export never overwrites)."
        )
    if not path.parent.exists():
        raise UserInputError(f"--out {out}: its parent folder {path.parent} does not exist; create it first.")
    return path


def export(ckpt_path: str, out: str, dtype: str = "float32") -> Path:
    """Writes the Hugging Face folder `out` (built in a temporary folder beside it, then renamed into place)."""
    try:
        import safetensors.torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as err:
        raise UserInputError(
            f'lightning-gpt export needs transformers and safetensors ({err.name} is missing): pip install -e ".[hf]"'
        ) from None
    from safetensors.torch import save_file

    from lightning_gpt.commands.export_tokenizer import hf_tokenizer, stop_token_ids

    path = check_out_dir(out)
    model, tokenizer = load_checkpoint(ckpt_path, device="cpu")  # float32 on the CPU
    check_llama_shaped(model.config, ckpt_path)
    chat = is_chat(tokenizer)
    stop_ids = stop_token_ids(tokenizer, chat)
    torch_dtype = DTYPES[dtype]
    try:
        with atomic_folder(path) as build:  # built beside --out, renamed into place when complete
            config = llama_config(model.config, stop_ids, tokenizer.eot_id, torch_dtype)
            config.save_pretrained(build)
            generation_config(model.config, stop_ids, tokenizer.eot_id).save_pretrained(build)
            weights = hf_state_dict(model, torch_dtype)
            save_file(weights, str(build / "model.safetensors"), metadata={"format": "pt"})
            os.chmod(build / "model.safetensors", ordinary_mode())  # safetensors writes it private (0600)
            hf_tokenizer(tokenizer, chat, model.config.block_size).save_pretrained(build, save_jinja_files=False)
    except OSError as err:  # a read-only or full disk, a folder not ours: one line, not a traceback
        raise UserInputError(
            f"--out {out}: cannot write there ({err.strerror or err}: {err.filename}); pass a folder you can write to."
        ) from None
    return path
