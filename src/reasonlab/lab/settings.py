"""The demo's options (`DemoConfig`) and the settings of its stages, which the methods study runs
too (`study.base_config`, `arms.arm_configs`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import SEED, check_options
from ..errors import UserError
from ..outdir import OVERWRITE_HELP
from ..rl import GRPOConfig
from ..train.pretrain import PretrainConfig
from ..train.rationales import RationalesConfig

TEMPLATE_FRACTION = 0.15  # documents of the base's corpus in the template: ~15% of its samples at T = 1


@dataclass
class DemoConfig:
    out: str = field(default="runs/demo", metadata={"help": "output folder", "nonempty": True})
    model: str = field(
        default="",
        metadata={
            "help": "a pretrained instruct model (Hugging Face folder, .gguf file or run folder): the same "
            "story on it, on two-digit sums through its chat template (docs/real-model.md); '' = the "
            "built-in tiny model"
        },
    )
    quick: bool = field(default=False, metadata={"help": "a scaled-down run (a minute or two, for CI)"})
    seed: int = field(default=0, metadata={"help": "seed of every stage", **SEED})
    length: int = field(
        default=4,
        metadata={
            "help": "variables per chain problem at most (the built-in demo's task; --model runs "
            "two-digit sums)",
            "min": 2,
            "max": 64,
        },
    )
    min_length: int = field(
        default=2,
        metadata={
            "help": "variables per chain problem at least: each problem draws its length from here to "
            "--length, a mix of difficulties (0 = every problem --length)",
            "min": 0,
            "max": 64,
        },
    )
    threads: int = field(default=0, metadata={"help": "torch threads (0 = all cores)", "min": 0, "max": 1024})
    device: str = field(
        default="cpu",
        metadata={"help": "cpu (what the stages' time limits are set for), cuda or auto; see docs/demo.md"},
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "go on from the last stage a stopped run in --out finished (same seed, length and quick)"
        },
    )
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})

    def __post_init__(self):
        check_options(self)
        if self.min_length and not 2 <= self.min_length <= self.length:
            raise UserError(
                f"--min-length must be between 2 and --length ({self.length}), got {self.min_length}"
            )


def stage_configs(cfg: DemoConfig):
    """Per-stage settings; `quick` shrinks every stage (CI checks it runs, not what it reaches)."""
    q = cfg.quick
    pre = PretrainConfig(
        steps=60 if q else 4000,
        batch_size=32 if q else 64,
        lr=3e-3,
        warmup_steps=20,
        schedule="constant",
        eval_every=30 if q else 50,
        max_seconds=20 if q else 240,
        corpus_size=2000 if q else 30000,
        worked_fraction=0.5,
        hint_fraction=0.2,
        check_problems=50 if q else 100,
        target_trigger_acc=0.2,
        group_by_length=False,
        max_seq_len=192,
        seed=cfg.seed,
        template_fraction=TEMPLATE_FRACTION,
    )
    m1 = RationalesConfig(
        rounds=1 if q else 3,
        problems=64 if q else 2000,
        samples=2 if q else 4,
        temperature=0.7,
        continue_training=True,
        steps=20 if q else 300,
        batch_size=32 if q else 64,
        lr=2e-3,
        warmup_steps=10,
        eval_every=0,
        eval_problems=50 if q else 200,
        max_seq_len=192,
        max_new_tokens=96,
        seed=cfg.seed,
    )
    # GRPO: 32 problems x 4 samples learned faster per second than 16 x 8 (more distinct problems a
    # step for the same rows; docs/methods.md). New tokens: `rl_new_tokens`.
    # Cosine decay over the 1000 steps (the run stops at 150 s first): from both benchmark starts it
    # crossed 95% sooner and never fell back under it (benchmarks/README.md, bench_grpo_target.py).
    rl = GRPOConfig(
        steps=3 if q else 1000,
        prompts_per_step=4 if q else 32,
        group_size=4,
        lr=3e-4,
        schedule="cosine",
        temperature=0.7,
        dynamic_sampling=True,
        max_new_tokens=rl_new_tokens(cfg),
        eval_every=3 if q else 25,
        eval_problems=50 if q else 200,
        max_seconds=30 if q else 150,
        seed=cfg.seed,
    )
    return pre, m1, rl


def rl_new_tokens(cfg: DemoConfig) -> int:
    """GRPO's completions at most: 16 tokens a variable and 16 more (80 at 4: the thought restates
    each step and ends with "The answer is ...", about 60 tokens at 3 hops and 66 with the tags at
    4, as Method 1's model writes them; 64 cut half of its 4-variable completions, and the study's
    GRPO from it started at 38% where Method 1's evaluation, at 96 tokens, read 100%)."""
    return 16 * cfg.length + 16
