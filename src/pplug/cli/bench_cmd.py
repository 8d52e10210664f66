"""``pplug bench``: every method side by side on one data folder (quality + cost table, JSON, chart)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from pplug.cli.options import DeviceOpt, DtypeOpt, QuietOpt, apply_quiet, device_overrides

Opt = typer.Option
DEFAULT_METHODS = "zero-shot,rag-bm25,rag-dense,task-lora,oppu,pplug,pplug-rag,pplug:no_persona,pplug:swap_history"
# task-lora and oppu fine-tune the backbone (OPPU: one adapter per test user): hours on a CPU with full data


def bench(data: Annotated[Path, Opt(help="Task folder with train/dev/test splits.")],
          out: Annotated[Path, Opt(help="Output folder: results.json, results.md, results.png, runs/.")],
          methods: Annotated[str, Opt(help="Comma-separated method specs: name[:variant][@section.field=value]. "
                                           "Variants: no_instruction, mean_pool, top_k, no_persona, "
                                           "swap_history. The default list includes task-lora and oppu, which "
                                           "take hours on a CPU with full data (bound them with --train-limit, "
                                           "--users).")] = DEFAULT_METHODS,
          limit: Annotated[int | None, Opt(help="Evaluate on the first N questions of --split.")] = None,
          split: Annotated[str, Opt(help="Evaluation split: test, or dev for tuning sweeps (epoch selection "
                                         "on dev is then off).")] = "test",
          train_limit: Annotated[int | None, Opt(help="Train on the first N train questions.")] = None,
          dev_limit: Annotated[int | None, Opt(help="Select epochs on the first N dev questions "
                                                            "(decoding weights: decode.tune_limit).")] = None,
          users: Annotated[int | None, Opt(help="OPPU: personalize only the first N test users.")] = None,
          latency_questions: Annotated[int, Opt(help="Questions timed one by one for latency.")] = 16,
          set_: Annotated[list[str] | None, Opt("--set", help="section.field=value for every method.")] = None,
          threads: Annotated[int | None, Opt(help="torch threads per method process.")] = None,
          device: DeviceOpt = None,
          dtype: DtypeOpt = None,
          fresh: Annotated[bool, Opt("--fresh/--reuse", metavar="",
                                     help="Rerun methods that already have a result in OUT, or reuse them.")] = False,
          quiet: QuietOpt = False,
          ) -> None:
    """Train what needs training (train split), select on dev, evaluate on test; one row per method plus
    non-LLM heuristic rows. A failing method is reported as failed and the others still run. Runs are
    reused when the same --out is used again with the same settings (a larger --limit only re-evaluates).
    Each method's output is streamed and kept in OUT/logs/<method>.log; the exit code is 1 when any method
    failed (results are still written)."""
    from pplug.bench import BenchConfig, run_bench

    apply_quiet(quiet)
    cfg = BenchConfig(data=str(data), methods=split_specs(methods), out=str(out),
                      limit=limit, split=split, train_limit=train_limit, dev_limit=dev_limit, users=users,
                      latency_questions=latency_questions, overrides=[*device_overrides(device, dtype), *(set_ or [])],
                      threads=threads, fresh=fresh)
    from pplug.config import config_from_spec
    from pplug.devices import check_run

    check_run(config_from_spec("zero-shot", str(data), cfg.overrides))  # e.g. no CUDA here: one line, exit 2
    result = run_bench(cfg)
    typer.echo((out / "results.md").read_text())
    if result["failed"]:
        typer.echo(f"error: {len(result['failed'])} method(s) failed: {', '.join(result['failed'])} "
                   f"(logs in {out / 'logs'})", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(bench)


FIELD_SET = re.compile(r"^[A-Za-z_]\w*\.[A-Za-z_]\w*\s*=")


def split_specs(text: str) -> list[str]:
    """``--methods`` into specs: ``a,pplug@plug.x=1,train.y=2,b`` -> ``[a, pplug@plug.x=1,train.y=2, b]``
    (a comma followed by ``section.field=`` continues the previous spec's ``@`` settings)."""
    specs: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if specs and "@" in specs[-1] and FIELD_SET.match(part):
            specs[-1] += "," + part
        else:
            specs.append(part)
    return specs
