"""Will a run fit in memory? A lower-bound estimate checked before any step, so a batch that cannot
fit is one line at the start ("this needs ~X GB, the machine has Y: lower --batch-size ...") instead
of a machine swapping for minutes or a process killed without a word.

The estimates count only what certainly exists at a step's peak: the weights, their gradients and
AdamW's two moments (16 bytes a float32 parameter), the logits of one micro-batch with their
log-softmax and gradient (3 float32 tensors of rows x positions x vocabulary), and the activations
autograd keeps (about 16 float32 values of width d_model a position and layer). Real use is higher
(allocator slack, the KV cache while sampling), so a run refused here would certainly not have fit.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from . import compute
from .errors import UserError

FLOAT = 4  # bytes
ADAM = 16  # bytes a trained parameter: weight, gradient, two moments
ACTIVATIONS = 16  # float32 values of width d_model autograd keeps a position and layer (a lower bound)


def available_bytes() -> int | None:
    """Memory this process may still take: MemAvailable, capped by a cgroup (v2 or v1) limit less
    its usage; None where neither can be read (not Linux)."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            cap, used = Path(limit).read_text().strip(), int(Path(usage).read_text())
        except (OSError, ValueError):
            continue
        if cap.isdigit() and int(cap) < 1 << 60:
            found.append(int(cap) - used)
        break
    return min(found) if found else None


def vocabulary(model) -> int:
    """The widest embedding table's rows (the vocabulary): the logits' width."""
    sizes = [m.num_embeddings for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    return max(sizes, default=1)


def step_bytes(model, rows: int, positions: int, trained_params: int | None = None) -> int:
    """A lower bound on a training step's memory: `rows` x `positions` tokens in one micro-batch,
    `trained_params` (default: all) with AdamW state."""
    n = compute.n_params(model)
    trained = n if trained_params is None else trained_params
    try:
        layers, width = compute.attention_shape(model)
    except ValueError:  # a model of unknown shape: count the logits and the weights only
        layers, width = 0, 0
    tokens = rows * positions
    logits = 3 * tokens * vocabulary(model) * FLOAT
    activations = ACTIVATIONS * tokens * layers * width * FLOAT
    return n * FLOAT + trained * (ADAM - FLOAT) + logits + activations


def check_fits(need: int, what: str, advice: str, device: str | torch.device = "cpu") -> None:
    """One `UserError` line when `need` bytes (a lower bound) exceed what the machine has left; GPUs
    are checked against their free memory."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        have = torch.cuda.mem_get_info(torch.device(device))[0]
    else:
        have = available_bytes()
    if have is not None and need > have and not os.environ.get("REASONLAB_SKIP_MEMORY_CHECK"):
        raise UserError(
            f"{what} needs at least ~{gb(need)} of memory, and this machine has {gb(have)} free: {advice} "
            "(REASONLAB_SKIP_MEMORY_CHECK=1 skips this check)"
        )


def gb(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**27 else f"{n / 2**20:.0f} MB"
