"""The ``pplug`` command line (typer). Each subcommand lives in its own module and maps onto configs."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from pplug.errors import PPlugError

app = typer.Typer(help="pplug: personalize a frozen LLM for each of its users.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]})


def _version(value: bool) -> None:
    if value:
        from pplug import __version__

        typer.echo(f"pplug {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: Annotated[bool, typer.Option("--version", metavar="", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False,
         quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="",
                                             help="Hide progress bars in every command.")] = False,
         ) -> None:
    """pplug: personalize a frozen LLM for each of its users."""
    if quiet:
        from pplug.progress import set_quiet

        set_quiet(True)


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
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # this process is the CLI: quiet fork warnings
    try:
        app(args=argv, standalone_mode=True)
    except PPlugError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
