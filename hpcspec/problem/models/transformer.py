"""A small causal transformer language model (GPT-style, pre-LayerNorm, no dropout).

Token and learned position embeddings, ``layers`` blocks of ``x + Attn(LN(x))`` then
``x + MLP(LN(x))`` (MLP: ``embed → 4·embed → embed`` with GELU), a final LayerNorm and a linear
head to the vocabulary: ``(B, T)`` integer tokens → ``(B, T, vocab)`` next-token logits.

Attention is written out (``softmax(QKᵀ/√d + mask) V``) instead of calling
``torch.nn.functional.scaled_dot_product_attention``: its fused CPU (flash) kernel has no
double backward ("derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is
not implemented", torch 2.x), and Hessian-vector products need one. The plain ops support both
double backward and forward-over-reverse.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t attends to positions ≤ t only."""

    def __init__(self, embed: int, heads: int, context: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(embed, 3 * embed)
        self.proj = nn.Linear(embed, embed)
        # True above the diagonal: the future a position must not see (a buffer, not a parameter)
        self.register_buffer("future", torch.ones(context, context, dtype=torch.bool).triu(1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps, embed = x.shape
        q, k, v = self.qkv(x).split(embed, dim=2)
        q, k, v = (t.view(batch, steps, self.heads, embed // self.heads).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(embed // self.heads)
        scores = scores.masked_fill(self.future[:steps, :steps], float("-inf"))
        out = F.softmax(scores, dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, steps, embed))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, embed: int, heads: int, context: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(embed)
        self.attn = CausalSelfAttention(embed, heads, context)
        self.ln2 = nn.LayerNorm(embed)
        self.mlp = nn.Sequential(nn.Linear(embed, 4 * embed), nn.GELU(), nn.Linear(4 * embed, embed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerLM(nn.Module):
    """Causal LM over ``vocab`` tokens and sequences of at most ``context`` tokens."""

    def __init__(self, vocab: int, context: int, *, embed: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.context = context
        self.tokens = nn.Embedding(vocab, embed)
        self.positions = nn.Embedding(context, embed)
        # GPT-2's initial scale: unit-variance embeddings would swamp the first LayerNorm'd sums
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.blocks = nn.Sequential(*(Block(embed, heads, context) for _ in range(layers)))
        self.ln = nn.LayerNorm(embed)
        self.head = nn.Linear(embed, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        steps = tokens.shape[1]
        if steps > self.context:
            raise ValueError(f"sequence of {steps} tokens exceeds the model's context of {self.context}")
        x = self.tokens(tokens) + self.positions(torch.arange(steps, device=tokens.device))
        return self.head(self.ln(self.blocks(x)))
