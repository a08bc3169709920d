"""`canaryml`: one command for every part.

It lives in its own package so that the server and the operator each register their
sub-commands here without importing one another; heavy imports happen inside the commands.
"""

from __future__ import annotations

import typer
from canaryml_operator import cli as operator_cli
from canaryml_server import cli as server_cli

from canaryml_cli.demo import command as demo_command

app = typer.Typer(
    name="canaryml",
    help="Take scikit-learn models from a notebook to production, and keep them safe there.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
server_cli.register(app)
operator_cli.register(app)
demo_command.register(app)


def main() -> None:
    app()
