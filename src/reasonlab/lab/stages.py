"""The progress both demos and both studies show: one line per stage, the current one ticking."""

from __future__ import annotations

from ..console import console


class Stages:
    """Rich progress: one line per stage, the current one ticking."""

    def __init__(self):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description:<34}"),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console(),
        )

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def stage(self, name: str, total: int):
        task = self.progress.add_task(name, total=total, info="")

        def update(advance: int = 1, completed: int | None = None, info: str | None = None):
            """Move the bar; `info` replaces the stage's text (left as it was when not given, so a
            stage's last result stays on its line)."""
            kwargs = {"completed": completed} if completed is not None else {"advance": advance}
            if info is not None:
                kwargs["info"] = info
            self.progress.update(task, **kwargs)

        return update

    def print(self, *args):
        self.progress.console.print(*args)
