"""``pplug score``: official-equivalent LaMP metrics of a prediction file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def score(task: Annotated[str, typer.Option(help="Task: a name (LaMP-5, news_categorize), a task file, a data "
                                                 "folder or a run folder.")],
          golds: Annotated[Path, typer.Option(help="Gold file {task, golds: [{id, output}]}.")],
          preds: Annotated[Path, typer.Option(help="Prediction file in the same format.")]) -> None:
    """Score predictions against golds; prints a JSON object of metrics. Refuses mismatched id sets."""
    from pplug.scoring import score_files

    typer.echo(json.dumps(score_files(task, golds, preds)))


def tasks(data: Annotated[Path | None, typer.Option(help="A data folder: show its task and where the definition "
                                                         "came from (task file, registry, inferred).")] = None
          ) -> None:
    """List the registered tasks, or show the task of a data folder (--data)."""
    from pplug.tasks import get_task, is_defined_by_data, task_names

    if data is not None:
        from pplug.task_file import task_to_json
        from pplug.task_resolve import resolve

        res = resolve(data)
        typer.echo(json.dumps({"folder": str(data), "task": res.task.name, "kind": res.task.kind,
                               "source": res.source, "reasons": res.reasons, "notices": res.notices,
                               "definition": task_to_json(res.task)}, indent=1, ensure_ascii=False))
        return
    for name in task_names():
        t = get_task(name)
        if not is_defined_by_data(name):
            typer.echo(f"{name:18s} {t.kind:15s} {t.description}")


def register(app: typer.Typer) -> None:
    app.command()(score)
    app.command()(tasks)
