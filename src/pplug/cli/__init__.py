"""The ``pplug`` command line (typer). Each subcommand lives in its own module and maps onto configs."""

from __future__ import annotations

import sys

import typer

from pplug.errors import PPlugError

app = typer.Typer(help="pplug: personalize a frozen LLM for each of its users.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)


def _register() -> None:
    from pplug.cli import data_cmd, score_cmd

    app.add_typer(data_cmd.app, name="data")
    score_cmd.register(app)
    try:
        from pplug.cli import model_cmds
    except ImportError:  # the model commands need torch; data/score commands do not
        return
    model_cmds.register(app)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors print one clear line and exit with code 2, never a traceback.

    Usage errors (missing/unknown options) are reported by click itself (standalone mode, exit 2).
    """
    try:
        app(args=argv, standalone_mode=True)
    except PPlugError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
