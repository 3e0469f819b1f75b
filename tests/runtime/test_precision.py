"""`runtime.precision`: the dtype GRPO's built-in engine samples in (`--rollout-dtype`), from the CPU's
flags and a timed matmul, both faked here.

Run: pytest tests/runtime/test_precision.py"""

import pytest
import torch

from reasonlab.runtime import precision
from reasonlab.runtime.precision import MIN_SPEEDUP, bf16_matmul_speedup, native_bf16, rollout_dtype

CPU = torch.device("cpu")
PLAIN = {"fpu", "sse2", "avx2", "avx512f"}  # AVX-512 but no bf16 instructions


@pytest.mark.parametrize(
    "flags,native",
    [
        (PLAIN, False),
        (PLAIN | {"avx512_bf16"}, True),
        (PLAIN | {"amx_bf16", "amx_tile"}, True),
        (set(), False),
    ],
)
def test_native_bf16_reads_the_flags(flags, native):
    assert native_bf16(flags) is native


def test_native_bf16_defaults_to_this_cpus_flags(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    assert native_bf16()
    monkeypatch.setattr(precision, "cpu_flags", lambda: set())
    assert not native_bf16()


def test_cpu_flags_is_a_set_of_names():
    flags = precision.cpu_flags()
    assert isinstance(flags, set) and all(isinstance(f, str) and " " not in f for f in flags)


def test_auto_keeps_fp32_without_native_bf16_and_never_times_a_matmul(monkeypatch):
    def no_timing(*_):
        raise AssertionError("timed a matmul on a CPU without native bf16")

    monkeypatch.setattr(precision, "cpu_flags", lambda: PLAIN)
    monkeypatch.setattr(precision, "bf16_matmul_speedup", no_timing)
    assert rollout_dtype("auto", CPU, 576) == torch.float32


@pytest.mark.parametrize(
    "speedup,dtype", [(MIN_SPEEDUP, torch.bfloat16), (2.1, torch.bfloat16), (1.1, torch.float32)]
)
def test_auto_on_a_native_bf16_cpu_follows_the_measured_speedup(monkeypatch, speedup, dtype):
    widths = []
    monkeypatch.setattr(precision, "cpu_flags", lambda: PLAIN | {"avx512_bf16"})
    monkeypatch.setattr(
        precision, "bf16_matmul_speedup", lambda width, rows=64: widths.append(width) or speedup
    )
    assert rollout_dtype("auto", CPU, 576) == dtype
    assert rollout_dtype("auto", CPU, 8192) == dtype
    assert widths == [576, precision.MEASURE_WIDTH]  # a very wide model is timed at the cap


def test_auto_keeps_a_narrow_model_in_fp32_untimed(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: PLAIN | {"amx_bf16"})
    monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda *_: pytest.fail("timed a narrow model"))
    assert rollout_dtype("auto", CPU, precision.MIN_WIDTH - 1) == torch.float32
    assert rollout_dtype("auto", CPU, 32) == torch.float32


def test_explicit_choices_are_taken_as_asked_and_others_refused(monkeypatch):
    monkeypatch.setattr(
        precision, "cpu_flags", lambda: PLAIN
    )  # bf16 would be emulated: still the user's call
    monkeypatch.setattr(
        precision, "bf16_matmul_speedup", lambda *_: pytest.fail("explicit choices time nothing")
    )
    assert rollout_dtype("fp32", CPU, 64) == torch.float32
    assert rollout_dtype("bf16", CPU, 64) == torch.bfloat16
    for bad in ("fp16", "float32", "BF16", ""):
        with pytest.raises(ValueError, match="auto, fp32 or bf16"):
            rollout_dtype(bad, CPU, 64)


def test_the_speedup_is_measured_once_per_width_rows_and_threads(monkeypatch):
    calls = []
    monkeypatch.setattr(precision, "_speedups", {})
    monkeypatch.setattr(precision, "_measure", lambda width, rows: calls.append((width, rows)) or 1.5)
    assert bf16_matmul_speedup(48) == bf16_matmul_speedup(48) == 1.5
    bf16_matmul_speedup(48, rows=8)
    assert calls == [(48, 64), (48, 8)]


def test_a_real_measurement_is_cheap_and_positive(monkeypatch):
    import time

    monkeypatch.setattr(precision, "_speedups", {})
    began = time.perf_counter()
    speedup = bf16_matmul_speedup(16, rows=8)
    assert speedup > 0 and time.perf_counter() - began < 2.0  # ~10 ms on an idle CPU
