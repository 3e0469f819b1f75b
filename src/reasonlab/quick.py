"""GRPO on your own dataset and reward functions in one call, as TRL's ``GRPOTrainer`` is used::

    from reasonlab.quick import grpo
    from reasonlab.rl import GRPOConfig

    result = grpo("path/to/model", reward_funcs=[my_reward], train_dataset=dataset,
                  config=GRPOConfig(steps=100, style="chat"), out="runs/mine")

`grpo` loads the model (a local folder, a reasonlab checkpoint, or a Hugging Face hub id, fetched
once), makes the dataset a task (`tasks.data.DataTask`: columns, verifier, held-out rows), adds your
rewards to the default one (`rewards.reward_plan`, TRL's calling convention), trains
(`rl.train_grpo`), writes metrics.jsonl and TensorBoard files in `out`, and saves the model to
``out/model`` with its config. The dataset is saved beside it (``out/data``) and recorded, so
``reasonlab eval --model out`` evaluates on the same held-out rows. docs/quickstart.md walks through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from .errors import UserError
from .model import train_record
from .outdir import RunFolder
from .rl import GRPOConfig, train_grpo
from .run.final import save_trained


class Trained(NamedTuple):
    model: object  # the trained model (LoRA merged)
    tokenizer: object
    metrics: dict  # the last step's metrics
    path: Path  # the run folder; the model is in path/model


def grpo(
    model,
    reward_funcs=(),
    train_dataset=None,
    eval_dataset=None,
    config=None,
    out: str = "runs/grpo",
    *,
    tokenizer=None,
    reward_weights=None,
    default_reward: bool | None = None,
    format_gate: bool = False,
    prompt_column: str | None = None,
    answer_column: str | None = None,
    verifier: str | None = None,
    system_prompt: str | None = None,
    prompt_template: str | None = None,
    output: str = "template",
    eval_fraction: float = 0.1,
    report_to: str = "tensorboard",
    overwrite: bool = False,
    progress=None,
) -> Trained:
    """Train `model` with GRPO on `train_dataset` (a `datasets.Dataset` or `DatasetDict`, or a path
    `--data` reads) and return the `Trained` result.

    `reward_funcs`: functions in TRL's convention (``f(prompts, completions, completion_ids,
    **columns) -> list[float | None]``), ``"module:function"`` strings, or built-in reward names;
    `reward_weights` one weight each. `default_reward=False` leaves them alone to judge;
    `format_gate` zeroes every reward of a completion whose template breaks. `verifier`: how the
    default reward checks answers (default: ``math`` when the dataset has an answer column, else
    ``none``). `config`: a `GRPOConfig` (defaults otherwise). `eval_dataset`: the held-out rows
    (default: `eval_fraction` of `train_dataset`, chosen by a hash of each row). `prompt_template`:
    a Jinja2 file rendering each prompt's user turn from the row's columns; `output="free"`: the
    model answers in its own format and `reward_funcs` alone judge (the default reward, which scores
    the template, is then off: `default_reward` None means on unless the output is free)."""
    if train_dataset is None:
        raise UserError("grpo needs train_dataset (a datasets.Dataset, or a path to a dataset)")
    cfg = config or GRPOConfig()
    folder = RunFolder.claim(out, "rl", overwrite, report_to)
    model, tokenizer = load(model, tokenizer)
    data = saved_dataset(train_dataset, eval_dataset, folder.path / "data")
    options = {
        "path": str(data),
        "prompt_column": prompt_column,
        "answer_column": answer_column,
        "verifier": default_verifier(data, answer_column) if verifier is None else verifier,
        "eval_fraction": eval_fraction,
        "system_prompt": system_prompt,
        "prompt_template": prompt_template,
        "output": output,
    }
    task, rewards = data_task(options, reward_funcs, reward_weights, default_reward, format_gate)
    metrics = train_grpo(model, tokenizer, task, cfg, out_dir=folder, progress=progress, rewards=rewards)
    final = save_trained(model, tokenizer, folder, train_record(cfg, task))
    return Trained(final, tokenizer, metrics, folder.path)


def default_verifier(data, answer_column: str | None) -> str:
    """``math`` when the dataset has an answer column (`answer_column`, ``answer`` or ``solution``),
    else ``none``."""
    from .tasks.data import read_splits

    columns = read_splits(data)["train"].column_names
    has_answer = (answer_column or "") in columns or any(c in columns for c in ("answer", "solution"))
    return "math" if has_answer else "none"


def data_task(options: dict, reward_funcs, reward_weights, default_reward: bool | None, format_gate: bool):
    """The ``data`` task over `options` (those given), and your rewards (a `RewardPlan`, recorded in
    the task's spec; None for the default reward alone)."""
    from .rewards import rewards_given
    from .tasks import get_task
    from .tasks.data import output_rewards

    task = get_task("data", **{k: v for k, v in options.items() if v is not None})
    rewards = rewards_given(list(reward_funcs), reward_weights, default_reward is not False, format_gate)
    rewards = output_rewards(task, rewards, default_reward)  # output="free": your rewards alone
    if rewards is not None:
        task.spec["rewards"] = rewards.spec()
    return task, rewards


def load(model, tokenizer=None):
    """(model, tokenizer): a path or hub id loaded, or the model given with its tokenizer."""
    from .model import load_model

    if not isinstance(model, str | Path):
        if tokenizer is None:
            raise UserError(
                "a model object needs its tokenizer= (reasonlab's, from reasonlab.model.load_model)"
            )
        return model, tokenizer
    path = Path(model).expanduser()
    if not path.exists() and "/" in str(model) and not str(model).startswith((".", "/")):
        try:  # a hub id: fetched once into the Hugging Face cache
            from huggingface_hub import snapshot_download
        except ImportError:
            raise UserError(f"{model} is not a folder here (and huggingface_hub is not installed)") from None
        path = Path(snapshot_download(str(model)))
    return load_model(path)


def saved_dataset(train_dataset, eval_dataset, where: Path):
    """The dataset as a folder the checkpoint can record (``save_to_disk``: a `DatasetDict` of train
    and, when given, test); a path is recorded as it is."""
    import datasets

    if isinstance(train_dataset, str | Path) and eval_dataset is None:
        return Path(train_dataset).expanduser().resolve()
    from .tasks.data import read_splits

    splits = read_splits(train_dataset)
    if eval_dataset is not None:
        splits = {"train": splits["train"], "test": read_splits(eval_dataset)["train"]}
    datasets.DatasetDict(splits).save_to_disk(str(where))
    return where
