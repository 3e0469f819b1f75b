"""Each command's options as one flat dataclass (`config.flat_options`): the fields of the parts it
is made of, listed in one place — the library config its work takes (`GRPOConfig`, `SFTConfig`,
...) and the groups only the command line needs (the model to load, the output folder, the task,
the device) — so `--config FILE` sets any option through `config.build_config`. The library part
goes on alone (`config.narrow`): what a run saves and a resume compares is its config. No command
class has a base class: a name two parts declare is an error, not a silent override.

Besides `config.py`'s limits, a field's metadata may shape its flag: ``"flags"`` (its names, e.g.
``("-o", "--output")``), ``"action"`` (``"store_true"``: a switch with no ``--no-`` form;
``"append"``: repeatable), ``"metavar"``, ``"positional"`` (an argument; a file cannot set it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import MAX_PROBLEMS, MAX_ROWS, flat_options
from .evaluate import EvalConfig, SampleConfig
from .lab.settings import DemoConfig
from .lab.study import StudyConfig
from .lab.study_compute import ComputeStudyConfig
from .model.export import GGUF_TYPES, HF_DTYPES
from .outdir import RunOptions, out_field
from .rl import GRPOConfig
from .template import OUTPUTS, PROMPT_STYLES
from .train.pretrain import PretrainConfig
from .train.rationales import RationalesConfig
from .train.sft import SFTConfig

FROM_MODEL = "task name (see `reasonlab tasks`); default: the task --model was trained on"
REQUIRED = (
    "task name (see `reasonlab tasks`), required"  # may come from --config: `make_task` says when missing
)
MODEL = "checkpoint, run folder, Hugging Face model folder or .gguf file"


def task_arg_field():
    return field(
        default=None,
        metadata={
            "help": "task option, repeatable (e.g. --task-arg digits=4)",
            "action": "append",
            "metavar": "KEY=VALUE",
        },
    )


@dataclass
class DeviceOptions:
    """`--device`: a command that runs a model takes it (first among its options)."""

    device: str = field(
        default="auto",
        metadata={
            "help": "where the model runs: auto (a GPU when torch sees one, "
            "else the CPU), cpu, cuda or cuda:N; under torchrun each rank takes cuda:LOCAL_RANK"
        },
    )


@dataclass
class TaskOptions:
    """--task (required: pretraining and scoring have no checkpoint to take it from) and --task-arg."""

    task: str = field(default="", metadata={"help": REQUIRED})
    task_arg: list[str] | None = task_arg_field()


@dataclass
class ModelTaskOptions:
    """--task (default: --model's own) and --task-arg."""

    task: str = field(default="", metadata={"help": FROM_MODEL})
    task_arg: list[str] | None = task_arg_field()


@dataclass
class ImportOptions:
    """--import: modules of your own (tasks, verifiers, rewards they register), recorded in the checkpoint."""

    imports: list[str] | None = field(
        default=None,
        metadata={
            "flags": ("--import",),
            "action": "append",
            "metavar": "MODULE",
            "help": "import this module (a name, or a .py file) first: the tasks it registers work with "
            "--task; repeatable; recorded, so eval and serve on the result import it again",
        },
    )


@dataclass
class DataOptions:
    """--data: your dataset instead of --task (the task ``data``, `tasks.data`), recorded in the
    checkpoint."""

    data: str = field(
        default="",
        metadata={
            "help": "your dataset: a JSONL, JSON, CSV or parquet file, a save_to_disk folder, or a folder "
            "of train/test files (the data task: docs/tasks.md)",
            "metavar": "PATH",
        },
    )
    prompt_column: str = field(
        default="", metadata={"help": "--data: the prompt column (default: prompt, question or problem)"}
    )
    answer_column: str = field(
        default="", metadata={"help": "--data: the gold answer column (default: answer or solution)"}
    )
    verifier: str = field(
        default="math",
        metadata={"help": "--data: how answers are checked: math, numeric, exact, none or a task's name"},
    )
    test_data: str = field(
        default="",
        metadata={
            "help": "--data: the test split (a file, folder or split name); default: the dataset's test "
            "or validation split, else --eval-fraction of its rows"
        },
    )
    eval_fraction: float = field(
        default=0.1,
        metadata={"help": "--data without a test split: the share of rows held out", "above": 0, "max": 1},
    )
    system_prompt: str = field(
        default="",
        metadata={"help": "--data: the system prompt (replaces the style's instruction)", "metavar": "TEXT"},
    )
    prompt_template: str = field(
        default="",
        metadata={
            "help": "--data: a Jinja2 file that renders each prompt's user turn from the row's columns "
            "(and question, system_prompt); docs/tasks.md",
            "metavar": "FILE",
        },
    )
    output_format: str = field(
        default="template",
        metadata={
            "help": "--data: what the model writes: template (<think>/<answer>, scored strictly) or free "
            "(its own format: no tags asked for, your --reward functions alone judge, eval reads the "
            "answer from free text)",
            "choices": OUTPUTS,
        },
    )


@dataclass
class RewardOptions:
    """--reward: reward functions of your own (`rewards.reward_plan`), beside the default reward."""

    reward: list[str] | None = field(
        default=None,
        metadata={
            "action": "append",
            "metavar": "MODULE:FUNCTION[=WEIGHT]",
            "help": "add this reward function (TRL's convention: f(prompts, completions, completion_ids, "
            "**columns) -> list[float | None]); repeatable",
        },
    )
    reward_weights: str = field(
        default="", metadata={"help": "weights of the --reward functions, in order (e.g. 1,0.5)"}
    )
    default_reward: bool | None = field(
        default=None,
        metadata={
            "help": "keep the format + correctness reward (the default, but with --output free; "
            "--no-default-reward: your rewards alone)"
        },
    )
    format_gate: bool = field(
        default=False, metadata={"help": "a completion whose template breaks gets 0, your rewards included"}
    )


@dataclass
class NoOptions:
    """`tasks`: nothing to set."""


@dataclass
class ReportOptions:
    run_dir: str = field(default="", metadata={"positional": True})


@dataclass
class ScoreFiles:
    """`score`'s input and output."""

    input: str = field(
        default="",
        metadata={
            "positional": True,
            "help": 'JSONL, one {"completion": str, "answer": str[, "prompt": str]} a line',
        },
    )
    output: str | None = field(
        default=None,
        metadata={
            "flags": ("-o", "--output"),
            "help": "write scored lines here (atomically) instead of stdout",
        },
    )


@dataclass
class FaithfulnessSettings:
    """The faithfulness probe's own settings."""

    model: str = field(default="", metadata={"help": MODEL})
    problems: int = field(default=100, metadata={"help": "held-out problems", "min": 1, "max": MAX_PROBLEMS})
    style: str = field(
        default="plain", metadata={"help": "prompt style: plain, r1 or chat", "choices": PROMPT_STYLES}
    )
    seed: int = 0
    output: str = field(default="", metadata={"help": "write the JSON results here"})


@dataclass
class ServeSettings:
    """The model `serve` serves, where it listens and what it takes at most."""

    model: str = field(default="", metadata={"help": MODEL})
    host: str = "127.0.0.1"
    port: int = 8000  # 0-65535, checked by `cmd_serve`
    max_batch_rows: int = field(
        default=64,
        metadata={
            "help": "rows (prompts x n) one generate call takes at most; "
            "concurrent requests share calls up to it",
            "min": 1,
            "max": MAX_ROWS,
        },
    )
    max_queue: int = field(
        default=512,
        metadata={"help": "rows waiting for the model at most; more: HTTP 429", "min": 1, "max": 10**6},
    )
    max_tokens: int = field(
        default=1024,
        metadata={"help": "cap on a request's max_tokens; above: HTTP 400", "min": 1, "max": 10**6},
    )
    max_body_bytes: int = field(
        default=1 << 20,
        metadata={"help": "request body size at most; larger: HTTP 413", "min": 1, "max": 2**31},
    )


def model_option(help: str) -> tuple:
    return (str, field(default="", metadata={"help": help}))


# Each command's options, its parts in the order its --help lists them.
ScoreOptions = flat_options(
    "ScoreOptions", TaskOptions, ScoreFiles, doc="`score`: a JSONL file's completions."
)
GenerateOptions = flat_options(
    "GenerateOptions",
    DeviceOptions,
    SampleConfig,
    doc="`generate`: sample completions for a task's problems.",
    task_arg=(list[str] | None, task_arg_field()),
)
EvalOptions = flat_options(
    "EvalOptions",
    DeviceOptions,
    EvalConfig,
    ImportOptions,
    DataOptions,
    doc="`eval`: accuracy, pass@k, maj@k, budget sweeps.",
    task_arg=(list[str] | None, task_arg_field()),
)
SFTOptions = flat_options(
    "SFTOptions",
    DeviceOptions,
    SFTConfig,
    doc="`sft`: `SFTConfig` has its model, out and resume already.",
    prompt_column=(
        str,
        field(
            default="", metadata={"help": "the prompt column of --data (default: prompt, or messages rows)"}
        ),
    ),
    completion_column=(
        str,
        field(default="", metadata={"help": "the completion column of --data (default: completion)"}),
    ),
)
PretrainOptions = flat_options(
    "PretrainOptions",
    RunOptions,
    DeviceOptions,
    PretrainConfig,
    TaskOptions,
    doc="`pretrain`: the built-in model from scratch.",
    out=out_field("runs/base"),
)
RationalesOptions = flat_options(
    "RationalesOptions",
    RunOptions,
    DeviceOptions,
    RationalesConfig,
    ModelTaskOptions,
    ImportOptions,
    DataOptions,
    doc="`rationales`: Method 1.",
    model=model_option("the base checkpoint"),
    teacher=model_option("sample rationales from this checkpoint or http(s):// endpoint instead"),
    judge=model_option("keep samples a judge accepts (checkpoint or http(s):// endpoint)"),
    out=out_field("runs/rationales"),
)
RLOptions = flat_options(
    "RLOptions",
    RunOptions,
    DeviceOptions,
    GRPOConfig,
    ModelTaskOptions,
    RewardOptions,
    ImportOptions,
    DataOptions,
    doc="`rl`: Method 2.",
    model=model_option("the checkpoint to train"),
    out=out_field("runs/rl"),
)
FaithfulnessOptions = flat_options(
    "FaithfulnessOptions",
    DeviceOptions,
    ModelTaskOptions,
    FaithfulnessSettings,
    doc="`faithfulness`: the hint probe.",
)
ServeOptions = flat_options(
    "ServeOptions",
    DeviceOptions,
    ImportOptions,
    ServeSettings,
    doc="`serve`: the OpenAI-compatible server.",
)


@dataclass
class ExportOptions:
    """`export`: a model as a GGUF file and/or a plain Hugging Face folder (at least one)."""

    model: str = field(
        default="", metadata={"help": "checkpoint, run folder or Hugging Face model folder to export"}
    )
    gguf: str = field(
        default="", metadata={"help": "write a GGUF file here (llama.cpp, ollama)", "metavar": "OUT.gguf"}
    )
    type: str = field(
        default="f16",
        metadata={"help": "the GGUF file's tensor type (1-D tensors stay f32)", "choices": GGUF_TYPES},
    )
    hf: str = field(
        default="", metadata={"help": "write a Hugging Face folder (safetensors) here", "metavar": "OUT_DIR"}
    )
    dtype: str = field(
        default="bf16",
        metadata={"help": "the Hugging Face folder's weight type", "choices": tuple(HF_DTYPES)},
    )
    overwrite: bool = field(
        default=False, metadata={"action": "store_true", "help": "replace an existing OUT.gguf or OUT_DIR"}
    )


DemoOptions = DemoConfig  # all of them the demo's own
StudyOptions = StudyConfig
ComputeStudyOptions = ComputeStudyConfig
