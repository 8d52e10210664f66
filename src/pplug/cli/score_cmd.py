"""``pplug score``: official-equivalent LaMP metrics of a prediction file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def score(task: Annotated[str, typer.Option(help="Task name, e.g. LaMP-5 or news_categorize.")],
          golds: Annotated[Path, typer.Option(help="Gold file {task, golds: [{id, output}]}.")],
          preds: Annotated[Path, typer.Option(help="Prediction file in the same format.")]) -> None:
    """Score predictions against golds; prints a JSON object of metrics. Refuses mismatched id sets."""
    from pplug.scoring import score_files

    typer.echo(json.dumps(score_files(task, golds, preds)))


def tasks() -> None:
    """List the registered tasks."""
    from pplug.tasks import get_task, task_names

    for name in task_names():
        t = get_task(name)
        typer.echo(f"{name:18s} {t.kind:15s} {t.description}")


def register(app: typer.Typer) -> None:
    app.command()(score)
    app.command()(tasks)
