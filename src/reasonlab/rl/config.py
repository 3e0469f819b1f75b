"""`GRPOConfig`: every setting of a Method 2 run (`reasonlab rl`), each with its help and limits.

The advantage estimator, policy loss and aggregation are chosen by name from `algos`' registries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import FRACTION, MAX_PROBLEMS, MAX_ROWS, check_options
from ..errors import UserError
from ..run.optim import OptimConfig, default_of
from ..runtime import RuntimeOptions
from ..template import PROMPT_STYLES
from .algos import ADVANTAGES, AGGREGATIONS, POLICY_LOSSES, ROLLOUT_CORRECTIONS


@dataclass
class GRPOConfig(OptimConfig, RuntimeOptions):
    steps: int = default_of("steps", 200, "RL steps at most")
    lr: float = default_of("lr", 1e-4)
    warmup_steps: int = default_of("warmup_steps", 5)
    schedule: str = default_of("schedule", "constant")
    eval_every: int = default_of("eval_every", 20, "held-out accuracy every N steps (0 = never)")
    seed: int = default_of("seed", 0, "problem order and sampling seed")
    prompts_per_step: int = field(
        default=16, metadata={"help": "P: problems per step", "min": 1, "max": MAX_ROWS}
    )
    group_size: int = field(
        default=8, metadata={"help": "G: completions per problem (>= 2)", "min": 2, "max": 1024}
    )
    # At least 1e-3: below it sampling is greedy for all practical purposes (a logit 0.02 below the top
    # is drawn e^-20 as often; `engine.temper`), so a group's G samples are one completion with equal
    # rewards (no advantage, nothing to learn), and the log-probs of logits / T scale gradients by 1 / T:
    # inf, NaN losses, at 1e-40.
    temperature: float = field(
        default=1.0, metadata={"help": "sampling temperature (>= 1e-3: lower is greedy)", "min": 1e-3}
    )
    max_new_tokens: int = field(
        default=160, metadata={"help": "tokens per completion at most", "min": 1, "max": 10**6}
    )
    updates: int = field(
        default=1,
        metadata={
            "help": "μ: gradient steps per batch (ratio clipping applies when > 1)",
            "min": 1,
            "max": 1000,
        },
    )
    eps_low: float = field(default=0.2, metadata={"help": "clip ratio below at 1 - eps_low", **FRACTION})
    eps_high: float = field(
        default=0.28, metadata={"help": "clip ratio above at 1 + eps_high (DAPO clip-higher)", "min": 0}
    )
    beta: float = field(
        default=0.0, metadata={"help": "KL weight to a frozen reference (0 = no reference kept)", "min": 0}
    )
    entropy_coef: float = field(
        default=0.0,
        metadata={
            "help": "entropy bonus: the loss subtracts this times each token's entropy (0 = none; > 0 "
            "trains on groups with equal rewards too)",
            "min": 0,
        },
    )
    advantage: str = field(
        default="group",
        metadata={
            "help": "advantage estimator: r - group mean, divided by the "
            "group's std (group), the batch's (batch) or nothing (none)",
            "choices": tuple(ADVANTAGES),
        },
    )
    policy_loss: str = field(
        default="clip",
        metadata={
            "help": "policy loss: clip (PPO's clipped surrogate), gspo (one length-normalised ratio per "
            "sequence, clipped: use --loss-agg seq_mean and the paper's tiny clips, e.g. --eps-low 3e-4 "
            "--eps-high 4e-4) or cispo (the clipped importance weight, stop-gradient, times A log π; the "
            "paper: --eps-low 1, no lower bound)",
            "choices": tuple(POLICY_LOSSES),
        },
    )
    loss_agg: str = field(
        default="token_mean",
        metadata={"help": "token_mean, seq_mean or constant", "choices": tuple(AGGREGATIONS)},
    )
    mask_truncated: bool = field(
        default=False, metadata={"help": "leave truncated completions out of the loss"}
    )
    stop_at_answer: bool = field(
        default=False,
        metadata={
            "help": "end each rollout at </answer> instead of at the model's end-of-text token (then "
            "the end-of-text token after a formatted answer never trains, only the one ending an "
            "unformatted completion: a one-sided push that slowed GRPO from the base; "
            "docs/methods.md). Off: a completion ends at end-of-text, and text after </answer> "
            "breaks the format"
        },
    )
    dynamic_sampling: bool = field(default=False, metadata={"help": "drop groups with equal rewards, refill"})
    skip_flat_groups: bool = field(
        default=True,
        metadata={
            "help": "beta = 0: groups with equal rewards (advantage 0, no gradient) skip the forward and "
            "backward; their tokens still count in the loss's normaliser, so the update is the same"
        },
    )
    oversample: float = field(
        default=1.25,
        metadata={
            "help": "dynamic sampling: problems drawn per attempt, as a multiple of the groups still "
            "missing, divided by the last step's share of groups with a reward spread",
            "min": 1,
        },
    )
    format_points: float = field(default=2.0, metadata={"help": "reward for the format"})
    correct_points: float = field(default=1.0, metadata={"help": "reward for a correct answer"})
    length_target: int = field(
        default=0,
        metadata={
            "help": 'length control (L1): ask each prompt to "think for N tokens" and reward -alpha |n - N|; '
            "N is this, or drawn per problem from it to --length-target-max (0 = off)",
            "min": 0,
            "max": 10**6,
        },
    )
    length_target_max: int = field(
        default=0,
        metadata={
            "help": "length control: the largest N drawn (0 = always --length-target)",
            "min": 0,
            "max": 10**6,
        },
    )
    length_alpha: float = field(
        default=1e-3, metadata={"help": "weight of the length-target reward", "min": 0}
    )
    budget_share: float = field(
        default=0.0,
        metadata={
            "help": "budget-aware RL: share of groups whose thinking is cut at a budget drawn from "
            "--budget-min..--budget-max (the close and <answer> forced, out of the loss; the answer after "
            "it rewarded)",
            **FRACTION,
        },
    )
    budget_min: int = field(
        default=0,
        metadata={"help": "budget-aware RL: the smallest thinking budget drawn", "min": 0, "max": 10**6},
    )
    budget_max: int = field(
        default=0,
        metadata={"help": "budget-aware RL: the largest thinking budget drawn", "min": 0, "max": 10**6},
    )
    style: str = field(
        default="plain",
        metadata={"help": "prompt style: plain, r1 or chat (instruct models)", "choices": PROMPT_STYLES},
    )
    trigger: bool = field(default=True, metadata={"help": "plain prompts: add the trigger phrase"})
    micro_batch_size: int = field(
        default=0,
        metadata={
            "help": "rows per forward/backward (gradients accumulate to the same update; "
            "0 = the whole batch)",
            "min": 0,
            "max": MAX_ROWS,
        },
    )
    shared_prompts: bool = field(
        default=True,
        metadata={
            "help": "compute each group's prompt once (same loss, fewer FLOPs): the built-in model packs the "
            "completions, Llama/Mistral/Qwen2/Qwen3 HF models run them on the prompt's KV cache; other "
            "models use padded rows"
        },
    )
    rollout_engine: str = field(
        default="builtin",
        metadata={
            "help": "who samples the groups: builtin, or vllm (GPUs, extra reasonlab[vllm])",
            "choices": ("builtin", "vllm"),
        },
    )
    rollout_dtype: str = field(
        default="auto",
        metadata={
            "help": "the built-in engine's sampling precision: a bf16 copy of the weights (bf16), the "
            "weights as they are (fp32), or auto: bf16 where the CPU has native bf16 (AMX or avx512_bf16), "
            "the model is at least 256 wide and a bf16 matmul at its width measures >= 1.2x fp32, else fp32 "
            "(GPUs: bf16 where supported; auto's timing can differ between runs: name the dtype for exact "
            "reruns); the update stays fp32 and --rollout-is corrects the difference",
            "choices": ("auto", "fp32", "bf16"),
        },
    )
    rollout_is: str = field(
        default="token_truncate",
        metadata={
            "help": "importance-sampling correction for the gap between the rollout's log-probs and the "
            "trainer's (another precision, vLLM): the loss of each token (token_*) or sequence "
            "(sequence_*) weighted by pi_train / pi_rollout truncated at --rollout-is-cap (*_truncate, "
            "TIS) or zeroed past it (*_mask, MIS); none = no correction",
            "choices": tuple(ROLLOUT_CORRECTIONS),
        },
    )
    rollout_is_cap: float = field(
        default=2.0,
        metadata={"help": "the importance weight's cap C for --rollout-is (>= 1)", "min": 1},
    )
    vllm_gpu_memory: float = field(
        default=0.3, metadata={"help": "vllm: share of GPU memory it may take", "above": 0, "max": 1}
    )
    max_flops: float = field(
        default=0.0,
        metadata={
            "help": "stop once the run's sampling and updates have cost this many FLOPs (2N a sampled token, "
            "6N a trained one, plus attention: `compute`; 0 = no limit)",
            "min": 0,
        },
    )
    eval_problems: int = field(
        default=200, metadata={"help": "held-out problems per evaluation", "min": 1, "max": MAX_PROBLEMS}
    )
    log_completions: int = field(
        default=2,
        metadata={
            "help": "completions a step written to samples.jsonl, whole groups first, with their prompt, "
            "reward parts and verdict",
            "min": 0,
            "max": 1024,
        },
    )
    no_format_patience: int = field(
        default=5,
        metadata={
            "help": "stop when no completion drawn in the first N steps is well-formed (every reward 0: "
            "nothing to learn from); 0 = never stop",
            "min": 0,
            "max": 10**9,
        },
    )

    def __post_init__(self):
        check_options(self)
        if self.length_target_max and not 0 < self.length_target <= self.length_target_max:
            raise UserError(
                f"--length-target-max {self.length_target_max} needs 0 < --length-target <= it, "
                f"got {self.length_target}"
            )
        if self.budget_share and not 0 < self.budget_max >= self.budget_min:
            raise UserError(
                f"--budget-share needs --budget-max > 0 and --budget-min <= --budget-max, got "
                f"{self.budget_min}..{self.budget_max}"
            )
        if self.budget_share and self.rollout_engine == "vllm":
            raise UserError(
                "--budget-share cuts thinking in the built-in engine: vLLM rollouts cannot (use "
                "--rollout-engine builtin)"
            )
