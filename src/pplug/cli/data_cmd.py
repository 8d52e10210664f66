"""``pplug data synth|init|validate|stats``: make, describe (task file), check and summarize data folders."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Annotated

import typer

from pplug.data import available_splits, load_split, resolve_task
from pplug.errors import DataError

app = typer.Typer(help="Make, validate and describe LaMP-format data folders.", no_args_is_help=True)

DataDir = Annotated[Path, typer.Argument(help="A folder with LaMP files ({split}_questions/outputs.json[.gz]) "
                                              "or custom {split}.jsonl files.")]
TaskOpt = Annotated[str | None, typer.Option(help="Task name (default: from the folder name or its files).")]


@app.command()
def synth(out: Annotated[Path, typer.Option(help="Output folder; one subfolder per synthetic task.")],
          seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0) -> None:
    """Write the deterministic synthetic tasks (synth_topic, synth_title) in LaMP format."""
    from pplug.synth import SynthConfig, synthesize

    folders = synthesize(out, SynthConfig(seed=seed))
    for name, folder in folders.items():
        typer.echo(f"{name}: {folder}")


def _folders(data_dir: Path) -> list[Path]:
    """The task folder itself, or its task subfolders (e.g. the output of `data synth`)."""
    if not data_dir.is_dir():
        raise DataError(data_dir, "data folder not found")
    if available_splits(data_dir):
        return [data_dir]
    subs = sorted(p for p in data_dir.iterdir() if p.is_dir() and available_splits(p))
    if not subs:
        raise DataError(data_dir, "no train/dev/test split files found here or in its subfolders")
    return subs


@app.command()
def validate(data_dir: DataDir, task: TaskOpt = None) -> None:
    """Load every split, checking every record; print counts per split. Exit 2 naming the file,
    record and field at fault."""
    for folder in _folders(data_dir):
        from pplug.task_resolve import resolve

        res = resolve(folder, task)
        name = res.task.name
        counts = {}
        for split in available_splits(folder):
            loaded = load_split(folder, split, name)
            if loaded.golds is None and split != "test":  # test may be unlabeled (official LaMP); train/dev not
                raise DataError(folder / f"{split}_outputs.json", f"the {split} split has no gold outputs "
                                f"({split}_outputs.json, or an 'output' per JSONL line); train and dev need them")
            counts[split] = {"questions": len(loaded), "golds": None if loaded.golds is None else len(loaded.golds),
                             "profile_items": sum(len(q.profile) for q in loaded.questions)}
        typer.echo(json.dumps({"folder": str(folder), "task": name, "task_source": res.source, "splits": counts,
                               "ok": True}))


@app.command()
def init(data_dir: DataDir,
         force: Annotated[bool, typer.Option("--force", help="Overwrite an existing task.json.")] = False,
         infer: Annotated[bool, typer.Option("--infer", help="Infer from the data even when a registered task "
                                                             "fits it.")] = False) -> None:
    """Write DATA_DIR/task.json for review: a registered task the data fits, else one inferred from the data
    (kind from the golds, labels from the inputs' bracketed lists, fields and templates from the profiles).
    Prints what it chose and why."""
    from pplug.task_file import TASK_FILE, write_task_file
    from pplug.task_resolve import resolve, resolve_without_file

    path = data_dir / TASK_FILE
    if path.exists() and not force:
        raise DataError(path, "a task file exists already; review or delete it, or pass --force to overwrite")
    res = resolve_without_file(data_dir, use_registry=not infer)
    write_task_file(path, res.task)
    check = resolve(data_dir)  # the written file must resolve (and validate) as it is
    how = "inferred from the data" if res.source == "inferred" else "a registered task the data fits"
    typer.echo(f"wrote {path}: {check.task.kind} task '{check.task.name}' ({how})")
    for line in res.reasons:
        typer.echo(f"  {line}")
    typer.echo(f"review it (docs/tasks.md describes every key), then: pplug data validate {data_dir}")


@app.command()
def stats(data_dir: DataDir, task: TaskOpt = None) -> None:
    """Describe each split: users, profile sizes, outputs, and the non-LLM reference scores."""
    from pplug.heuristics import heuristic_predictions
    from pplug.scoring import score_predictions
    from pplug.tasks import get_task

    for folder in _folders(data_dir):
        t = get_task(resolve_task(folder, task))
        splits = {s: load_split(folder, s, t.name) for s in available_splits(folder)}
        report: dict = {"folder": str(folder), "task": t.name, "kind": t.kind, "splits": {}}
        for name, sp in splits.items():
            sizes = [len(q.profile) for q in sp.questions]
            row: dict = {"questions": len(sp), "users": len({q.user_key for q in sp.questions}),
                         "profile_median": statistics.median(sizes) if sizes else 0,
                         "profile_min": min(sizes, default=0), "profile_max": max(sizes, default=0)}
            if sp.golds:
                outs = list(sp.golds.values())
                if t.kind == "generation":
                    row["output_words_mean"] = round(statistics.mean(len(o.split()) for o in outs), 2)
                else:
                    counts: dict[str, int] = {}
                    for o in outs:
                        counts[o] = counts.get(o, 0) + 1
                    row["outputs"] = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
                if "train" in splits and splits["train"].golds:
                    preds = heuristic_predictions(t, splits["train"], sp)
                    row["heuristics"] = {h: score_predictions(t, sp.golds, p) for h, p in preds.items()}
            report["splits"][name] = row
        typer.echo(json.dumps(report, indent=1))
