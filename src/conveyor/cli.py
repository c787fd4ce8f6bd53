"""The ``conveyor`` command line. Thin: it parses arguments and calls the library."""

from __future__ import annotations

import typer

import conveyor

app = typer.Typer(
    name="conveyor",
    help="Conveyor: typed, concurrent, back-pressured data pipelines.",
    no_args_is_help=True,
    add_completion=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"conveyor {conveyor.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version."
    ),
) -> None:
    """Conveyor: typed, concurrent, back-pressured data pipelines."""


@app.command()
def version() -> None:
    """Print Conveyor's version."""
    typer.echo(f"conveyor {conveyor.__version__}")


def main() -> None:
    """Entry point of the ``conveyor`` console script and ``python -m conveyor``."""
    app()
