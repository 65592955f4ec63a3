"""The whole model: a decoder-only causal transformer in plain PyTorch (no Lightning here).

The block is Llama-shaped (RMSNorm, rotary positions in the rotate-half layout, SwiGLU, no biases) so that a
trained model maps one-to-one onto Hugging Face's `LlamaForCausalLM` (fused `qkv` splits into q/k/v) for export.
Settings from the NanoGPT speedrun (modded-nanogpt) change the block: QK-norm, a ReLU-squared MLP, output
projections that start at zero, soft-capped logits and a shortcut from the embedding into every block; each is off
by default, and the ones Llama cannot represent are listed by `GPTConfig.non_llama_settings`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from lightning_gpt.chunked_loss import chunked_cross_entropy_sum
from lightning_gpt.errors import UserInputError

# Targets equal to this carry no loss. Data modules write it; the loss reads it.
IGNORE_INDEX = -100

# Compiled, the training loss takes whole logits (the compiler fuses the cross-entropy) when the micro-batch's float32
# logits take at most this many bytes; otherwise, and always in eager mode, it runs over chunks of rows
# (lightning_gpt/chunked_loss.py), whose gradient is written over the logits in the forward pass: even as one chunk,
# 0.95x the step time and 0.82x the peak memory of torch's cross-entropy over whole logits at the CPU shape of
# docs/benchmarks.md. 1 GiB: that shape (8 x 256 tokens: 0.4 GB) compiles whole logits, gpt2-124m's micro-batch
# (16 x 1,024 tokens: 3.3 GB, and as much again for their gradient) takes chunks.
WHOLE_LOGITS_MAX_BYTES = 1 << 30

MLP_KINDS = ("swiglu", "relu2")

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64},  # tests and CPU smoke runs
    "small": {"n_layer": 6, "n_head": 6, "n_embd": 384},  # ~30M parameters
    "gpt2-124m": {"n_layer": 12, "n_head": 12, "n_embd": 768},  # GPT-2 small's shape
    # Beyond one GPU's comfortable size (configs/multi_gpu.yaml): GPT-2 medium, large and XL's shapes.
    "gpt2-350m": {"n_layer": 24, "n_head": 16, "n_embd": 1024},
    "gpt2-774m": {"n_layer": 36, "n_head": 20, "n_embd": 1280},
    "gpt2-1.5b": {"n_layer": 48, "n_head": 25, "n_embd": 1600},
}


def _round_up(value: int, multiple: int) -> int:
    return multiple * math.ceil(value / multiple)


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    """Number of real token ids; the embedding is padded past it to `padded_vocab_size`."""
    block_size: int = 1024
    """Longest sequence the model attends over (its context length)."""
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    """Dropout on attention weights and on each residual branch; 0 for pretraining at this scale."""
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    qk_norm: bool = False
    """RMS-normalise each head's queries and keys (no gain) before the rotary positions."""
    mlp: str = "swiglu"
    """The MLP: "swiglu" (gate, up, down) or "relu2" (up, ReLU squared, down: 1.5 times as wide, so that its two
    matrices hold as many parameters as SwiGLU's three)."""
    zero_init_proj: bool = False
    """Start each residual branch's output projection (attn.proj, mlp.down) at zero, so every block starts as the
    identity; otherwise GPT-2's init, scaled down with depth."""
    logit_softcap: float | None = None
    """Logits become softcap * tanh(logits / softcap): bounded in (-softcap, softcap). None: plain logits."""
    embed_shortcut: bool = False
    """Each block first mixes the embedding back into its input, x = a * x + b * x0, with learned a, b (from 1 and
    0: at the start the plain model)."""
    padded_vocab_size: int = field(init=False)
    """`vocab_size` rounded up to a multiple of 64, for fast matmuls."""
    mlp_hidden: int = field(init=False)
    """The MLP's hidden width. SwiGLU: 8/3 of `n_embd` (the same parameters as a 4x GELU MLP), rounded up to a
    multiple of 64; ReLU squared: 1.5 times SwiGLU's (two matrices instead of three, the same parameters)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise UserInputError(f"model config: {name} must be positive, got {getattr(self, name)}.")
        if self.n_embd % self.n_head:
            raise UserInputError(f"model config: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}).")
        if (self.n_embd // self.n_head) % 2:
            raise UserInputError(
                f"model config: the head size n_embd / n_head = {self.n_embd // self.n_head} must be even "
                "for rotary positions; change n_embd or n_head."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise UserInputError(f"model config: dropout must be in [0, 1), got {self.dropout}.")
        if self.mlp not in MLP_KINDS:
            raise UserInputError(f"model config: mlp must be one of {list(MLP_KINDS)}, got {self.mlp!r}.")
        if self.logit_softcap is not None and not (math.isfinite(self.logit_softcap) and self.logit_softcap > 0):
            raise UserInputError(
                f"model config: logit_softcap must be a positive number or null (no cap), got {self.logit_softcap}."
            )
        self.padded_vocab_size = _round_up(self.vocab_size, 64)
        swiglu_hidden = _round_up(int(8 * self.n_embd / 3), 64)
        self.mlp_hidden = swiglu_hidden if self.mlp == "swiglu" else 3 * swiglu_hidden // 2

    def non_llama_settings(self) -> list[str]:
        """The settings in use that Llama's block has no place for (export refuses them). zero_init_proj is not one:
        it changes only where training starts."""
        found = [name for name in ("qk_norm", "embed_shortcut") if getattr(self, name)]
        if self.mlp != "swiglu":
            found.append(f"mlp={self.mlp}")
        if self.logit_softcap is not None:
            found.append("logit_softcap")
        return found

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> GPTConfig:
        if preset not in PRESETS:
            raise UserInputError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[preset], **overrides})


def rotary_tables(config: GPTConfig, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each (block_size, head_size), in the rotate-half layout."""
    half = config.head_size // 2
    inv_freq = 1.0 / (config.rope_base ** (torch.arange(0, half, device=device, dtype=torch.float32) / half))
    angles = torch.outer(torch.arange(config.block_size, device=device, dtype=torch.float32), inv_freq)  # (T, hs/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hs)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, nh, T, hs); cos, sin: (T, hs)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class LayerCache:
    """One layer's keys and values for incremental decoding: (B, nh, max_len, hs) buffers filled left to right."""

    def __init__(self, batch: int, n_head: int, max_len: int, head_size: int, device, dtype) -> None:
        self.k = torch.zeros(batch, n_head, max_len, head_size, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: (B, nh, T, hs) for the next T slots. Returns all filled slots, (B, nh, S, hs)."""
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} positions; {end} were asked for")
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qk_norm = config.qk_norm
        self.norm_eps = config.norm_eps
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: LayerCache | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, T, C). Training: causal over x. Inference: x continues the sequence held in `cache`, and
        attn_mask (B, 1, T, S) says which of the S cached slots each new position may see."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if self.qk_norm:  # every query and key of unit RMS: attention logits stay bounded whatever the weights
            q = F.rms_norm(q, (q.shape[-1],), eps=self.norm_eps)
            k = F.rms_norm(k, (k.shape[-1],), eps=self.norm_eps)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, S, hs): every slot so far
        if attn_mask is None:
            # Flash / memory-efficient kernels on CUDA, a fused kernel on CPU.
            dropout = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.proj(y))


class SwiGLU(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.up = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.down = nn.Linear(config.mlp_hidden, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.silu(self.gate(x)) * self.up(x)))


class _ReLUSquared(torch.autograd.Function):
    """relu(u)^2, with the gradient 2 relu(u) g in two passes over the saved relu(u). Autograd's `F.relu(u).square()`
    takes five in eager mode (pow's backward, then relu's): forward and backward, 0.6x its time here (4.3 against
    7.2 ms a layer at 4 x 256, 8 x 256 tokens, on the 2-core VM: benchmarks/relu2_backward.py). Compiled, inductor
    fuses either."""

    @staticmethod
    def forward(ctx, u: torch.Tensor) -> torch.Tensor:
        r = torch.relu(u)
        ctx.save_for_backward(r)  # what autograd's version keeps too
        return r * r

    @staticmethod
    @once_differentiable  # r was saved outside the graph: a second derivative would be wrong, so it raises
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (r,) = ctx.saved_tensors
        return grad.mul(r).mul_(2)  # 0 where u <= 0, as r is there


class ReLU2(nn.Module):
    """up, ReLU squared, down (Primer, So et al. 2021; the NanoGPT speedrun's MLP)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.down = nn.Linear(config.mlp_hidden, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(_ReLUSquared.apply(self.up(x))))  # (..., C) -> (..., mlp_hidden) -> (..., C)


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.mlp_norm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.mlp = SwiGLU(config) if config.mlp == "swiglu" else ReLU2(config)
        # (a, b) of x = a * x + b * x0; absent unless embed_shortcut, so other models keep their state-dict keys.
        self.shortcut = nn.Parameter(torch.tensor([1.0, 0.0])) if config.embed_shortcut else None

    def forward(self, x: torch.Tensor, x0: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None,
                attn_mask=None):  # fmt: skip
        """x: (B, T, C), the residual stream; x0: (B, T, C), the embedding it started from."""
        if self.shortcut is not None:
            x = self.shortcut[0] * x + self.shortcut[1] * x0
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, attn_mask)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied: one matrix reads and writes tokens
        cos, sin = rotary_tables(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch's output projection shrinks with depth (or starts at zero).
        for name, param in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                if config.zero_init_proj:
                    nn.init.zeros_(param)
                else:
                    nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss: idx, targets (B, T), T <= block_size. Returns the summed cross-entropy (float32) over
        the targets that are not IGNORE_INDEX; the caller divides (training normalises by the targets of a whole
        optimizer step). This is what torch.compile compiles. Compiled, and when the float32 logits take at most
        WHOLE_LOGITS_MAX_BYTES, the loss takes whole logits (the compiler fuses the cross-entropy); otherwise the
        head runs over chunks of rows, so the (B, T, vocab) logits and their gradient never exist
        whole (lightning_gpt/chunked_loss.py)."""
        x = self.hidden_states(idx).flatten(0, 1)  # (B * T, C)
        targets = targets.flatten()  # (B * T,)
        logit_bytes = x.shape[0] * self.config.padded_vocab_size * 4
        if torch.compiler.is_compiling() and logit_bytes <= WHOLE_LOGITS_MAX_BYTES:
            logits = self._head(x).float()  # (B * T, vocab)
            return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
        return chunked_cross_entropy_sum(
            x, self.lm_head.weight, targets, IGNORE_INDEX, vocab_size=self.config.vocab_size,
            softcap=self.config.logit_softcap,
        )  # fmt: skip

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., C) -> logits over the real vocabulary (..., vocab), soft-capped if the model says so."""
        # The real rows of the weight, not the padded logits sliced afterwards: contiguous logits, and no
        # (B * T, padded vocab) zeros and copy in the backward (0.35 s of a 4.4 s step at the CPU shape).
        return self._capped(F.linear(x, self.lm_head.weight[: self.config.vocab_size]))

    def _capped(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits soft-capped if the model says so."""
        cap = self.config.logit_softcap
        if cap is None:
            return logits
        return (cap * torch.tanh(logits.float() / cap)).to(logits.dtype)

    def logits(self, idx: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) -> logits over the real vocabulary, (B, T, vocab); with `select` (B, T) bool, only where it is
        True, (n, vocab) in row-major order (preference training scores answer tokens only; the prompt's logits
        would be most of the work). The head computes the padded rows (a matmul of a multiple of 64 is faster) and
        drops them, so they take no probability mass in any loss, log-probability or sample; the exported model
        has no such rows either."""
        x = self.hidden_states(idx)  # (B, T, C)
        if select is not None:
            x = x[select]  # (n, C)
        return self._head(x)

    def decode(
        self, idx: torch.Tensor, positions: torch.Tensor, caches: list[LayerCache] | None, attn_mask: torch.Tensor
    ) -> torch.Tensor:
        """One step of generation (lightning_gpt/generate.py): idx (B, T) continues the sequences held in `caches`
        (one LayerCache per layer; None recomputes every slot), positions (B, T) gives each token's rotary position
        and attn_mask (B, 1, T, S) the slots each may attend to. Returns the logits at the last position, (B, vocab):
        a long prompt's other logits are unused."""
        x = self.hidden_states(idx, positions, caches, attn_mask)[:, -1]  # (B, C)
        if x.device.type != "cpu":
            return self._head(x)
        # A few rows against the 50k-row head: the CPU's BLAS is 2-3x faster as weight @ x^T than as x @ weight^T
        # (16 rows x 384: 18 ms against 39 ms on the 2-core VM of docs/benchmarks.md), the decoding step's largest
        # product. Left as the transposed view (B, vocab), strides (1, B): a copy to rows would cost as much again
        # at width 64.
        return self._capped((self.lm_head.weight[: self.config.vocab_size] @ x.T).T)

    def hidden_states(
        self,
        idx: torch.Tensor,
        positions: torch.Tensor | None = None,
        caches: list[LayerCache] | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """idx: (B, T) token ids. Returns the final, normalised hidden states (B, T, C), what the language-model
        head reads (and a reward model's scalar head). The other arguments are decode's."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than the model's block_size {self.config.block_size}")
        x = self.drop(self.tok_emb(idx))  # (B, T, C)
        if positions is None:
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, hs)
        else:
            cos, sin = self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1)  # (B, 1, T, hs)
        x0 = x
        for i, block in enumerate(self.blocks):
            x = block(x, x0, cos, sin, caches[i] if caches is not None else None, attn_mask)
        return self.norm(x)

    def new_caches(self, batch: int, max_len: int) -> list[LayerCache]:
        c, weight = self.config, self.tok_emb.weight
        return [LayerCache(batch, c.n_head, max_len, c.head_size, weight.device, weight.dtype) for _ in self.blocks]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 L C T."""
        c = self.config
        seq_len = seq_len or c.block_size
        return 6 * self.num_parameters() + 12 * c.n_layer * c.n_embd * seq_len
