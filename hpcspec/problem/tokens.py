"""Synthetic token sequences for language-model spectra: a seeded first-order Markov (bigram) source.

A random transition matrix over ``vocab`` symbols (rows ``softmax(2·z)``, z standard normal: peaked
enough that next-token prediction is learnable, spread enough that the loss is not trivial) and
``samples`` sequences of ``context + 1`` tokens drawn from it, the first uniformly. The model sees
``x = seq[:-1]`` and predicts ``y = seq[1:]``. Everything comes from ``seed``, so every rank
draws the same data set and keeps its slice.
"""

from __future__ import annotations

import torch


def markov_tokens(samples: int, context: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: int64 ``(samples, context)`` inputs and their next tokens."""
    gen = torch.Generator().manual_seed(seed)
    transitions = torch.softmax(2.0 * torch.randn(vocab, vocab, generator=gen, dtype=torch.float64), dim=1)
    seq = torch.empty(samples, context + 1, dtype=torch.int64)
    seq[:, 0] = torch.randint(0, vocab, (samples,), generator=gen)
    for t in range(context):
        seq[:, t + 1] = torch.multinomial(transitions[seq[:, t]], 1, generator=gen).squeeze(1)
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
