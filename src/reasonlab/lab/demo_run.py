"""A demo run's folder, results and resume, shared by the built-in demo (`demo.BuiltinDemoRun`) and
the one on a pretrained model (`demo_real.RealDemoRun`)."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from .. import compute
from ..errors import UserError
from ..jsonl import read_json
from ..model import load_model, save_checkpoint, train_record
from ..outdir import claim, mark
from .report import build_report
from .settings import DemoConfig

BEFORE = {"min_length": 0}  # what runs made before these settings existed ran with (one length of problem)


def earlier_run(out: Path, cfg: DemoConfig) -> dict:
    """`--resume`: the results a stopped run in `out` saved, if it ran with the same settings."""
    if not (out / "results.json").is_file():
        raise UserError(f"--resume: {out} holds no demo run to go on with (no results.json)")
    earlier = read_json(out / "results.json")
    made = earlier.get("config", {})
    # A run made before a setting existed ran as the setting's default, or as BEFORE says.
    made = {**{k: getattr(DemoConfig, k) for k in ("seed", "length", "quick", "model")}, **BEFORE, **made}
    keys = ("seed", "quick", "model") + (
        ("length", "min_length") if not cfg.model else ()
    )  # --model: sums, no chain
    other = [f"{k}={made[k]!r}" for k in keys if made[k] != getattr(cfg, k)]
    if other:
        raise UserError(
            f"--resume: the run in {out} was made with {', '.join(other)}; run without --resume "
            "to start over, or give the same settings"
        )
    return earlier


class DemoRun:
    """One demo run: its folder, settings, held-out problems and results; one method a stage. A
    subclass sets them up and adds the stages: `demo.BuiltinDemoRun` (the tiny model) and
    `demo_real.RealDemoRun` (a pretrained model, `demo --model`).

    With --resume, a stage is taken from the stopped run while every stage before it was too and
    what it left is complete (its results, its checkpoint); from the first stage that runs, all run."""

    def open_folder(self):
        """Claim --out (with --resume, read what the stopped run saved there), start the clock, set
        the threads."""
        cfg = self.cfg
        self.out = claim(cfg.out, "demo", cfg.overwrite, resume=cfg.resume)
        self.earlier = earlier_run(self.out, cfg) if cfg.resume else {}
        self.start = time.monotonic() - self.earlier.get("seconds", 0.0)
        mark(self.out, "demo")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

    def save(self):
        """Write results.json (after every stage, so nothing computed is lost if a later one fails)."""
        self.results["seconds"] = time.monotonic() - self.start
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2))

    def done_before(self, keys: tuple, checkpoint: str | None = None) -> bool:
        """Whether the stopped run's results `keys` (and `checkpoint`) are taken instead of running
        the stage; when they are, they go into the results."""
        self.reuse = (
            self.reuse
            and all(k in self.earlier for k in keys)
            and (checkpoint is None or (self.out / "checkpoints" / checkpoint / "config.json").is_file())
        )
        if self.reuse:
            self.results.update({k: self.earlier[k] for k in keys})
        return self.reuse

    @contextmanager
    def ledger(self, stage: str):
        """Count the block's compute and time under results' ``ledger[stage]`` ({flops, seconds}; a
        stage taken from the stopped run keeps what it recorded then)."""
        t = time.monotonic()
        with compute.track() as spent:
            yield
        ledger = self.results.setdefault("ledger", {})
        if not self.reuse:
            cost = compute.model_cost(self.base)  # every stage trains a model of the base's shape
            ledger[stage] = {"flops": spent.flops(cost), "seconds": time.monotonic() - t}
        elif stage in self.earlier.get("ledger", {}):
            ledger[stage] = self.earlier["ledger"][stage]
        self.save()

    def load(self, name: str):
        model, tokenizer = load_model(self.out / "checkpoints" / name)
        return model.to(self.where), tokenizer

    def keep(self, name: str, model, stage_cfg):
        save_checkpoint(self.out / "checkpoints" / name, model, self.tok, train_record(stage_cfg, self.task))

    def report(self) -> dict:
        """7. report.html and its plots; the results as saved."""
        build_report(self.out)
        self.save()
        return self.results
