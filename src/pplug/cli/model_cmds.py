"""``pplug train|predict|eval|demo|methods``: the model commands. Flags map onto RunConfig fields;
``--set section.field=value`` reaches any other field (see ``pplug.config``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

Opt = typer.Option


def build_config(method: str, data: Path, task: str | None, backbone: str | None, encoder: str | None,
                 epochs: int | None, lr: float | None, batch_size: int | None, max_steps: int | None,
                 limit: int | None, dev_limit: int | None, seed: int | None, persona_tokens: int | None,
                 augment_copies: int | None, class_balanced: bool | None, train_input_encoder: bool | None,
                 k: int | None, retriever: str | None, users: int | None, overrides: list[str] | None):
    """A RunConfig from CLI flags (``method`` is a spec: ``pplug:no_persona``, ``pplug@plug.top_k=2``).

    ``--epochs``/``--lr`` set ``train.*`` for PPlug and ``lora.task_*`` for the LoRA methods."""
    from pplug.config import LORA_METHODS, config_from_spec, validate

    cfg = config_from_spec(method, str(data))
    cfg.task = task or ""
    optim, prefix = (cfg.lora, "task_") if cfg.method in LORA_METHODS else (cfg.train, "")
    pairs = [(cfg.backbone, "name_or_path", backbone), (cfg.encoder, "name_or_path", encoder),
             (optim, f"{prefix}epochs", epochs), (optim, f"{prefix}lr", lr), (cfg.train, "batch_size", batch_size),
             (cfg.train, "max_steps", max_steps), (cfg.train, "limit", limit), (cfg.train, "dev_limit", dev_limit),
             (cfg.train, "seed", seed), (cfg.plug, "n_persona_tokens", persona_tokens),
             (cfg.train, "augment_copies", augment_copies), (cfg.train, "class_balanced", class_balanced),
             (cfg.plug, "train_input_encoder", train_input_encoder), (cfg.retrieval, "k", k),
             (cfg.retrieval, "retriever", retriever), (cfg.lora, "users", users)]
    for section, field, value in pairs:
        if value is not None:
            setattr(section, field, value)
    if overrides:
        from pplug.config import apply_override

        for o in overrides:
            apply_override(cfg, o)
    return validate(cfg)


def train(
    method: Annotated[str, Opt(help="Method, optionally with a variant: pplug, pplug:no_persona, rag-bm25, ...")],
    data: Annotated[Path, Opt(help="Data folder (LaMP or JSONL layout) with train (and dev) splits.")],
    out: Annotated[Path, Opt(help="Run folder to write (config, trainable weights, reports).")],
    task: Annotated[str | None, Opt(help="Task name (default: inferred from the data folder).")] = None,
    backbone: Annotated[str | None, Opt(help="Backbone: 'smollm2-135m' (bundled) or a local HF folder.")] = None,
    encoder: Annotated[str | None, Opt(help="Encoder: 'all-minilm-l6-v2' (bundled) or a local folder.")] = None,
    epochs: Annotated[int | None, Opt(help="Training epochs (LoRA methods: of the task stage).")] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate (LoRA methods: of the task stage).")] = None,
    batch_size: Annotated[int | None, Opt(help="Examples per micro-batch.")] = None,
    max_steps: Annotated[int | None, Opt(help="Stop after N optimizer steps (quick runs).")] = None,
    limit: Annotated[int | None, Opt(help="Use only the first N train questions.")] = None,
    dev_limit: Annotated[int | None, Opt(help="Evaluate on only the first N dev questions per epoch.")] = None,
    seed: Annotated[int | None, Opt(help="Random seed.")] = None,
    persona_tokens: Annotated[int | None, Opt(help="PPlug: persona soft tokens per user.")] = None,
    augment_copies: Annotated[int | None, Opt(help="History augmentation copies per example (0 = off).")] = None,
    class_balanced: Annotated[bool | None, Opt("--class-balanced/--no-class-balanced",
                                               help="Classification: inverse-frequency loss weights.")] = None,
    train_input_encoder: Annotated[bool | None, Opt("--train-input-encoder/--frozen-input-encoder",
                                                    help="PPlug: fine-tune the input encoder or freeze it.")] = None,
    k: Annotated[int | None, Opt(help="Retrieval: items in the prompt.")] = None,
    retriever: Annotated[str | None, Opt(help="Retrieval: bm25 | dense | recency.")] = None,
    users: Annotated[int | None, Opt(help="OPPU: personalize only the first N test users.")] = None,
    set_: Annotated[list[str] | None, Opt("--set", help="Any config field: section.field=value.")] = None,
    resume: Annotated[bool, Opt("--resume", help="Continue from the run folder's last epoch checkpoint.")] = False,
) -> None:
    """Train a method on the train split, keep the best dev epoch, write the run folder."""
    from pplug.runner import train_run

    cfg = build_config(method, data, task, backbone, encoder, epochs, lr, batch_size, max_steps, limit,
                       dev_limit, seed, persona_tokens, augment_copies, class_balanced, train_input_encoder,
                       k, retriever, users, set_)
    report = train_run(cfg, out, resume=resume)
    report.pop("history", None)
    typer.echo(json.dumps(report, indent=1))


RunOpt = Annotated[Path, Opt(help="A run folder made by `pplug train`.")]
DataOpt = Annotated[Path, Opt(help="Data folder.")]
SplitOpt = Annotated[str, Opt(help="train | dev | test")]
LimitOpt = Annotated[int | None, Opt(help="Only the first N questions.")]
SwapOpt = Annotated[bool, Opt("--swap-history", help="Diagnostic: give each question another user's history.")]


def predict(run: RunOpt, data: DataOpt, out: Annotated[Path, Opt(help="Prediction file (LaMP format).")],
            split: SplitOpt = "test", limit: LimitOpt = None, swap_history: SwapOpt = False) -> None:
    """Predict a split with a trained run; writes {"task", "golds": [{"id", "output"}]}."""
    from pplug.runner import predict_run

    _, timing, _ = predict_run(run, data, split, limit, swap_history, out=out)
    typer.echo(json.dumps({"predictions": str(out)} | timing))


def eval_(run: RunOpt, data: DataOpt, split: SplitOpt = "test", limit: LimitOpt = None,
          swap_history: SwapOpt = False) -> None:
    """Predict and score a split; prints a JSON object of metrics and timing."""
    from pplug.runner import eval_run

    typer.echo(json.dumps(eval_run(run, data, split, limit, swap_history), indent=1))


def methods() -> None:
    """List the registered methods."""
    from pplug.methods import method_names

    for name in method_names():
        typer.echo(name)


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(predict)
    app.command(name="eval")(eval_)
    app.command()(methods)
    from pplug.cli import bench_cmd
    from pplug.cli.demo_cmd import demo

    app.command()(demo)
    bench_cmd.register(app)
    from pplug.cli.serve_cmd import register as register_serve

    register_serve(app)
