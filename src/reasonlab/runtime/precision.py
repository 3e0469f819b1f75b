"""The precision a rollout engine samples in (`--rollout-dtype`): bf16 where it is fast, else fp32.

On a GPU with bf16 support a bf16 copy of the weights samples faster. On a CPU it depends: with
native bf16 (AMX, AVX-512 BF16) a bf16 matmul at a 576-wide model measured ~2x fp32 on a 2-core
EPYC, but a narrow model's sampling is bound by overhead and elementwise work (bf16 sampled slower
below ~256 wide there), and without the native instructions torch emulates bf16 some 100x slower
than fp32. So "auto" on a CPU keeps narrow models in fp32, asks the flags, and only where they say
native times a matmul at the model's width.
"""

from __future__ import annotations

import statistics
import time

import torch

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bf16 matmuls
# auto takes bf16 on a CPU when its matmul measures at least this much faster than fp32: below it
# the gain hardly pays for copying the weights each step, nor for the noise in the measurement
MIN_SPEEDUP = 1.2
# auto keeps fp32 on a CPU for a model narrower than this, untimed: there sampling is bound by the
# per-op overhead and elementwise work, which bf16 makes slower, not by the matmuls. The built-in GPT
# (4 layers, 1 thread, 2-core EPYC with avx512_bf16) sampled in bf16 at 0.61x fp32's speed 64 wide,
# 0.69x 128 wide (where the matmul alone measures 1.5x), 0.90x 192, 1.15x 256 and 1.37x 384 wide.
MIN_WIDTH = 256
MEASURE_WIDTH = 1024  # auto times at most this width (wider matmuls gain as much or more; it bounds the cost)
REPEATS = 7  # timed pairs (an fp32 block, then a bf16 one) after a warm-up
BLOCK_SECONDS = 1e-3  # one timed block repeats the matmul to last about this long (a narrow one is too short)
MAX_BLOCK = 1000  # matmuls a block repeats at most
ROLLOUT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

_speedups: dict[tuple[int, int, int], float] = {}  # (width, rows, torch threads) -> measured speedup


def cpu_flags() -> set[str]:
    """The CPU's feature flags (the ``flags`` line of /proc/cpuinfo); empty where unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def native_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU computes bf16 matmuls natively (AMX or AVX-512 BF16); `flags` default: this CPU's."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in BF16_FLAGS)


def bf16_matmul_speedup(width: int, rows: int = 64) -> float:
    """fp32 time / bf16 time of a (rows x width) @ (width x 4 width) matmul on the CPU: the median
    over `REPEATS` timed pairs after a warm-up, each pair an fp32 block then a bf16 block back to
    back, so a busy machine slows both alike. Measured once per (width, rows, torch thread count)
    in a process; it takes some 20 ms (up to ~0.3 s where other work holds the cores)."""
    key = (width, rows, torch.get_num_threads())
    if key not in _speedups:
        _speedups[key] = _measure(width, rows)
    return _speedups[key]


def _measure(width: int, rows: int) -> float:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(rows, width, generator=g), torch.randn(width, 4 * width, generator=g)
    operands = ((a, b), (a.bfloat16(), b.bfloat16()))
    for x, y in operands:
        _time(x, y, 1)  # warm-up: the first call picks kernels and allocates
    # a block lasts ~BLOCK_SECONDS of fp32 work: ~1 matmul where each takes longer (wide, or a busy machine)
    n = min(MAX_BLOCK, max(1, round(BLOCK_SECONDS / max(_time(a, b, 1), 1e-9))))
    ratios = []
    for _ in range(REPEATS):
        fp32, bf16 = (_time(x, y, n) for x, y in operands)
        ratios.append(fp32 / max(bf16, 1e-9))
    return statistics.median(ratios)


def _time(a: torch.Tensor, b: torch.Tensor, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        torch.mm(a, b)
    return time.perf_counter() - start


def rollout_dtype(choice: str, device: torch.device, width: int) -> torch.dtype:
    """The dtype to sample in for `choice` (`--rollout-dtype`) on `device`, for a model `width` wide.
    fp32 and bf16 are taken as asked (bf16 on a CPU without native bf16 is slow: the user's call);
    auto is bf16 on a GPU that supports it, and on a CPU with native bf16 for a model at least
    `MIN_WIDTH` wide whose matmul at that width measures `MIN_SPEEDUP` x faster (timed only then),
    else fp32."""
    if choice in ROLLOUT_DTYPES:
        return ROLLOUT_DTYPES[choice]
    if choice != "auto":
        raise ValueError(f"rollout dtype must be auto, fp32 or bf16, got {choice!r}")
    device = torch.device(device)
    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and width >= MIN_WIDTH and native_bf16():
        if bf16_matmul_speedup(min(width, MEASURE_WIDTH)) >= MIN_SPEEDUP:
            return torch.bfloat16
    return torch.float32
