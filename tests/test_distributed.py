"""torchrun with 2 processes on the gloo backend (CPU): the same global batch and seed give the
single-process loss curve. Run: pytest tests/test_distributed.py"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.skipif(not TORCHRUN.exists() and not shutil.which("torchrun"), reason="torchrun not installed")
def test_ddp_two_processes_match_one(tmp_path):
    rows = [{"prompt": f"{i}*{j}=", "completion": f"<think>{i} times {j}</think><answer>{i * j}</answer>"}
            for i in range(12) for j in range(12)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["sft", "--data", str(tmp_path / "d.jsonl"), "--steps", "12", "--batch-size", "8", "--eval-every", "0",
            "--lr", "3e-3", "--warmup-steps", "2"]
    subprocess.run([sys.executable, "-m", "reasonlab", *args, "--out", str(tmp_path / "one")], env=ENV, check=True,
                   capture_output=True)
    torchrun = str(TORCHRUN) if TORCHRUN.exists() else shutil.which("torchrun")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "reasonlab", *args,
                           "--out", str(tmp_path / "two")], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one = [json.loads(line)["loss"] for line in (tmp_path / "one.state" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(line)["loss"] for line in (tmp_path / "two.state" / "metrics.jsonl").read_text().splitlines()]
    assert len(one) == len(two) == 12
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-5
    assert one[-1] < one[0]  # it trained
    assert (tmp_path / "two" / "model.safetensors").is_file()  # rank 0 saved the (unwrapped) model
