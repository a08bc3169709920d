"""`canaryml`: one command for every part.

It lives in its own package so that the model server, the router and the operator each register
their sub-commands here without importing one another; heavy imports happen inside the commands.
The options of `serve` and `router` are made from the programs' settings classes
(`canaryml_cli.options`), so that a setting's flag, default and help are declared once, on its
field.
"""

from __future__ import annotations

import typer
from canaryml_operator import cli as operator_cli
from canaryml_router import cli as router_cli
from canaryml_router.settings import RouterSettings
from canaryml_server import cli as server_cli
from canaryml_server.settings import ServerSettings

from canaryml_cli.demo import command as demo_command
from canaryml_cli.options import settings_command

# The model server's flags: the settings a person starting it by hand sets; the rest
# (drift, limits, fault injection...) are environment variables only (docs/serving.md).
SERVE_FLAGS = ("model_uri", "host", "port", "track", "model_deployment", "model_sha256")

serve = settings_command(
    ServerSettings,
    server_cli.serve,
    fields=SERVE_FLAGS,
    names={"model_uri": "model", "model_sha256": "sha256"},
    argument="model_uri",
)
# Every router setting is a flag; the repeatable track maps are named in the singular.
router = settings_command(
    RouterSettings, router_cli.route, names={"upstreams": "upstream", "versions": "version"}
)

app = typer.Typer(
    name="canaryml",
    help="Take scikit-learn models from a notebook to production, and keep them safe there.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
server_cli.register(app)
app.command("serve")(serve)
app.command("router")(router)
operator_cli.register(app)
demo_command.register(app)


def main() -> None:
    app()
