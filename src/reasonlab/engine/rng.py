"""Counter-based random numbers: a row's uniforms are a pure function of (its seed, the step)."""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
UNIFORM_BLOCK = 512  # steps hashed at a time


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (int64 tensors holding values < 2**32; products stay below 2**63)."""
    for _ in range(2):
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def keyed_uniform(keys: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """Uniforms in (0, 1), float64, that are a pure function of (key, step): counter-based sampling.
    Keys and steps broadcast: (B,) keys and an int step give (B,); (B, 1) keys and (T,) steps give
    the (B, T) table a whole generation draws from, computed once. Kept in float64: in float32 the
    top 2**-25 of the hash would round to exactly 1."""
    h = _mix32(keys & _MASK32) ^ _mix32((keys >> 32) + 0x9E3779B9)
    h = _mix32(h ^ _mix32(torch.as_tensor(step, device=keys.device) + 0x7F4A7C15))
    return (h.double() + 0.5) / 2**32


def row_uniforms(row_seeds: list[int], steps: int, device) -> torch.Tensor:
    """(B, steps): row i's uniform for every step, from its seed (`SamplingParams.row_seeds`)."""
    seeds = torch.tensor(row_seeds, dtype=torch.long, device=device)
    # In blocks of steps: the hash's int64 temporaries stay small for long generations.
    return torch.cat(
        [
            keyed_uniform(seeds[:, None], torch.arange(s, min(s + UNIFORM_BLOCK, steps), device=device))
            for s in range(0, steps, UNIFORM_BLOCK)
        ],
        dim=1,
    )
