"""``pplug demo``: the main job on embedded defaults: synthetic data, bundled models, PPlug train + eval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pplug.cli.options import QuietOpt, apply_quiet


def demo(out: Annotated[Path, typer.Option(help="Folder for the synthetic data and the run.")] = Path("runs/demo"),
         task: Annotated[str, typer.Option(help="Synthetic task: synth_topic or synth_title.")] = "synth_topic",
         backbone: Annotated[str, typer.Option(help="Backbone (default: bundled SmolLM2-135M).")] = "smollm2-135m",
         encoder: Annotated[str, typer.Option(help="Encoder (default: bundled MiniLM).")] = "all-minilm-l6-v2",
         epochs: Annotated[int | None, typer.Option(min=1, help="Training epochs (default: the task kind's: "
                                                   "classification 3, generation 2).")] = None,
         persona_tokens: Annotated[int, typer.Option(min=1, help="Persona soft tokens.")] = 4,
         quiet: QuietOpt = False) -> None:
    """Make the synthetic data, train PPlug on it with the bundled models, evaluate on test, and print
    the result beside the non-LLM heuristics and the swap-history diagnostic."""
    from pplug.config import RunConfig

    apply_quiet(quiet)
    from pplug.data import load_split
    from pplug.heuristics import heuristic_predictions
    from pplug.resources import Resources
    from pplug.runner import eval_run, train_run
    from pplug.scoring import score_predictions
    from pplug.synth import SynthConfig, synthesize
    from pplug.tasks import get_task

    folders = synthesize(out / "data", SynthConfig(seed=0))
    data = folders[task]
    cfg = RunConfig(method="pplug", data=str(data), task=task)
    cfg.backbone.name_or_path, cfg.encoder.name_or_path = backbone, encoder
    cfg.train.epochs, cfg.plug.n_persona_tokens = epochs, persona_tokens  # epochs None: the task kind's default
    cfg.train.augment_copies = 2  # keeps the demo within minutes on 2 cores; the reference uses 10
    # every other setting is the task kind's default (pplug/kind_defaults.py, README "Defaults per task kind")
    t = get_task(task)
    resources = Resources()
    run = out / f"pplug-{task}"
    report = train_run(cfg, run, resources)
    alone = None
    if report.get("label_prior_tuning"):  # the ablation first (eval_test.json keeps the run's own setting)
        alone = eval_run(run, data, "test", resources=resources,
                         overrides=["decode.label_prior=0", "decode.label_shift=0"])["metrics"]
    result = eval_run(run, data, "test", resources=resources)
    swap = eval_run(run, data, "test", swap_history=True, resources=resources)
    train, test = load_split(data, "train", task), load_split(data, "test", task)
    rows = {"pplug": result["metrics"], "pplug:swap_history": swap["metrics"]}
    if alone is not None:
        rows["pplug (LLM alone, label_prior=0, label_shift=0)"] = alone
    for name, preds in heuristic_predictions(t, train, test).items():
        rows[name] = score_predictions(t, test.golds, preds)
    summary = {"task": task, "test_questions": len(test), "train_seconds": report["train_seconds"],
               "label_prior": report.get("label_prior_tuning"),
               "seconds_per_question": result["seconds_per_question"], "peak_rss_mb": result["peak_rss_mb"],
               "results": rows, "run": str(run)}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=1))
    typer.echo(json.dumps(summary, indent=1))
