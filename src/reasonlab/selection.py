"""What a command's options select: the task (`--task` and `--task-arg`, `--data`, `--import`, or
the one a checkpoint records) and `rl`'s reward plan (`--reward`). Every command that runs a model
resolves them here, before any work; a mistake is one `UserError` line."""

from __future__ import annotations

import sys

from .errors import UserError


def parse_value(text: str):
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, anything else stays a string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_key_values(items: list[str] | None, what: str) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{what} must look like KEY=VALUE, got {item!r}")
        out[key.replace("-", "_")] = parse_value(value)
    return out


def make_task(name: str, task_args: list[str] | None = None, model: str = ""):
    """The task `--task NAME --task-arg K=V ...` names. Without a name, the task (and its options)
    that checkpoint `model` was trained on, as its train_config.json records, `--task-arg` on top."""
    from .tasks import get_task

    kwargs = parse_key_values(task_args, "--task-arg")
    if not name:
        from .model.checkpoint import recorded_task

        recorded = recorded_task(model) if model else None
        if not isinstance(recorded, dict) or "name" not in recorded:
            raise UserError(
                "--task is required" + (f": {model} records no task it was trained on" if model else "")
            )
        name, kwargs = recorded["name"], {**recorded.get("options", {}), **kwargs}
        from .plugins import import_modules

        import_modules(recorded.get("imports"))  # the run's --import modules, where its task lives
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        print(
            f"task: {name}" + (f" ({shown})" if shown else "") + f", the one {model} was trained on",
            file=sys.stderr,
        )
    try:
        return get_task(name, **kwargs)
    except TypeError as e:  # an option the task does not take
        raise UserError(f"task {name!r}: {e}") from None


# options that shape a --data task's prompts or output, refused without --data
DATA_ONLY = {
    "--system-prompt": lambda opts: opts.system_prompt,
    "--prompt-template": lambda opts: opts.prompt_template,
    "--output-format free": lambda opts: opts.output_format != "template",
}


def task_of(opts):
    """The task of a command with `DataOptions`: --data's dataset (the ``data`` task) or `make_task`'s,
    after the --import modules (and those --model's run imported), recorded in the task's spec so
    the checkpoint finds them again."""
    from .plugins import import_modules, recorded_imports
    from .tasks import get_task
    from .tasks.data import data_task_options, refuse_training_rows

    model = getattr(opts, "model", "")
    imports = import_modules(dict.fromkeys([*recorded_imports(model), *(opts.imports or [])]))
    if opts.data:
        if opts.task and opts.task != "data":
            raise UserError(f"give --task or --data, not both (--task {opts.task} --data {opts.data})")
        options = {**data_task_options(opts), **parse_key_values(opts.task_arg, "--task-arg")}
        task = get_task("data", **options)
    else:
        given = [flag for flag, on in DATA_ONLY.items() if on(opts)]
        if given:
            raise UserError(f"{given[0]} goes with --data (a built-in task's prompt is set by --style)")
        task = make_task(opts.task, opts.task_arg, model)
    if imports:
        task.spec["imports"] = imports
    if getattr(opts, "split", "test") == "test" and model:  # `eval`: never on rows the model trained on
        from .model.checkpoint import recorded_task

        refuse_training_rows(task, recorded_task(model), model)
    return task


def rewards_of(opts, task):
    """`rl`'s --reward functions (`rewards.RewardPlan`), recorded in the task's spec; None for the
    method's reward alone."""
    from .rewards import rewards_given
    from .tasks.data import output_rewards

    weights = [parse_value(w) for w in opts.reward_weights.split(",")] if opts.reward_weights else None
    plan = rewards_given(opts.reward or [], weights, opts.default_reward is not False, opts.format_gate)
    plan = output_rewards(task, plan, opts.default_reward)  # --output-format free: your rewards alone judge
    if plan is not None:
        task.spec["rewards"] = plan.spec()
    return plan
