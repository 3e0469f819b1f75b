"""Tasks: problem sources with verifiers. `get_task(name, **kwargs)` builds a registered one."""

from . import arithmetic, chain, countdown, data, gsm8k, mathverify  # noqa: F401  (registers the built-ins)
from .base import Problem, Task, get_task, list_tasks, register_task, split_of

__all__ = ["Problem", "Task", "get_task", "list_tasks", "register_task", "split_of"]
