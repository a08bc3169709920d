"""The `serve` and `router` options come from the settings classes: the flags are pinned, each
maps to a field, and the defaults and help shown are the fields' own."""

from __future__ import annotations

import os
from typing import Any, Literal

import pytest
import typer
import typer.main
from canaryml_cli.main import SERVE_FLAGS, app
from canaryml_cli.options import (
    command_line_type,
    environment_names,
    settings_command,
    shown_default,
)
from canaryml_httpd.settings import ConnectionSettings
from canaryml_router.settings import RouterSettings
from canaryml_server.settings import ServerSettings
from pydantic_settings import BaseSettings
from typer.testing import CliRunner

# Today's flags, recorded before the options were generated: they must not change.
SERVE_OPTIONS = {"--host", "--port", "--track", "--model-deployment", "--sha256"}
ROUTER_OPTIONS = {
    "--model-deployment", "--follow", "--no-follow", "--namespace", "--upstream",
    "--canary-weight", "--shadow-percent", "--sticky-header", "--version",
    "--probability-tolerance", "--canary-match", "--rate-limit-requests-per-second",
    "--rate-limit-burst", "--rate-limit-client-header", "--rate-limit-max-clients",
    "--admin", "--no-admin", "--host", "--port",
    "--upstream-timeout", "--shadow-timeout", "--max-mirrors", "--log-level",
    "--admin-host", "--admin-port", "--admin-upstreams", "--no-admin-upstreams",
    "--max-upstream-connections", "--max-upstream-answer-bytes", "--max-upstream-head-bytes",
    "--upstream-answer-budget-bytes",
    "--max-body-bytes", "--body-budget-bytes", "--max-header-bytes", "--max-headers",
    "--header-timeout", "--body-timeout", "--keep-alive-timeout", "--max-concurrency",
}  # fmt: skip
# The model server's settings that are environment variables only (docs/serving.md).
SERVE_ENVIRONMENT_ONLY = {
    "require_sha256", "trusted_sources", "model_name", "model_version", "runtime",
    "onnx_threads", "drift_enabled", "drift_window", "drift_sample_rows", "drift_min_rows",
    "metrics_enabled",
    "unknown_categories", "max_body_bytes", "max_batch_rows", "model_cache_dir", "log_level",
    "inject_errors", "inject_latency", "inject_latency_fraction",
    "max_artifact_bytes", "max_artifact_files",
    "body_budget_bytes", "max_header_bytes", "max_headers", "header_timeout", "body_timeout",
    "keep_alive_timeout", "max_concurrency",
    "feedback_key", "feedback_key_file", "feedback_previous_keys", "feedback_previous_keys_file",
    "feedback_max_age", "feedback_max_items", "feedback_dedup_size",
}  # fmt: skip
# The parameters named otherwise than their field.
RENAMED = {
    "serve": {"model": "model_uri", "sha256": "model_sha256"},
    "router": {"upstream": "upstreams", "version": "versions"},
}
SETTINGS: dict[str, type[BaseSettings]] = {"serve": ServerSettings, "router": RouterSettings}


def _params(command: str) -> list[Any]:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    return list(group.commands[command].params)


def _field(command: str, param: Any) -> str:
    return RENAMED[command].get(param.name, param.name)


def test_the_flags_are_todays() -> None:
    serve, router = _params("serve"), _params("router")
    assert [(p.name, p.opts) for p in serve if p.param_type_name == "argument"] == [
        ("model", ["model"])
    ]
    options = {opt for p in serve if p.param_type_name == "option" for opt in p.opts}
    assert options == SERVE_OPTIONS
    assert all(p.param_type_name == "option" for p in router)
    assert {o for p in router for o in (*p.opts, *p.secondary_opts)} == ROUTER_OPTIONS
    repeatable = {p.opts[0] for p in router if p.multiple}
    assert repeatable == {"--upstream", "--version", "--canary-match"}
    short = {o for p in serve + router for o in p.opts if not o.startswith("--")} - {"model"}
    assert short == set()


@pytest.mark.parametrize("command", ["serve", "router"])
def test_every_flag_is_a_field_and_every_field_a_flag(command: str) -> None:
    fields = {_field(command, p) for p in _params(command) if p.name != "help"}
    declared = set(SETTINGS[command].model_fields)
    assert fields <= declared
    if command == "router":
        assert fields == declared
    else:
        assert fields == set(SERVE_FLAGS)
        assert declared - fields == SERVE_ENVIRONMENT_ONLY


@pytest.mark.parametrize("settings", [ServerSettings, RouterSettings])
def test_every_field_is_described(settings: type[BaseSettings]) -> None:
    assert [name for name, field in settings.model_fields.items() if not field.description] == []


@pytest.mark.parametrize("command", ["serve", "router"])
def test_defaults_and_help_are_the_fields(command: str) -> None:
    settings = SETTINGS[command]
    for param in _params(command):
        if param.name == "help":
            continue
        field = settings.model_fields[_field(command, param)]
        assert field.description, f"{param.name}: describe the field, it is the flag's help"
        environment = ", ".join(environment_names(settings, _field(command, param)))
        assert param.help == f"{field.description} (env: {environment})"
        assert param.default == shown_default(field)
    # Nothing is restated: every default the help shows is the field's.
    shown = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    lines = {
        line.split()[1]: line
        for line in shown.output.splitlines()
        if line.startswith("│ --") and "--help" not in line
    }
    for param in _params(command):
        if param.param_type_name != "option" or param.name == "help":
            continue
        default = shown_default(settings.model_fields[_field(command, param)])
        line = lines[param.opts[0]]
        if default is None or default == "":  # none to show (the router's ModelDeployment)
            assert "[default:" not in line
        elif isinstance(default, bool):
            assert f"[default: {'' if default else 'no-'}{param.opts[0][2:]}]" in line
        else:
            assert f"[default: {default}]" in line


def _probe() -> tuple[typer.Typer, list[RouterSettings]]:
    """A `router` command made from RouterSettings whose run records the settings."""
    seen: list[RouterSettings] = []
    probe = typer.Typer()
    probe.command("router")(
        settings_command(RouterSettings, seen.append, names={"upstreams": "upstream"})
    )
    probe.command("other")(lambda: None)  # two commands, so that typer keeps the names
    return probe, seen


def test_a_flag_wins_over_the_environment_which_wins_over_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [n for n in os.environ if n.startswith("CANARYML_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CANARYML_MODEL_DEPLOYMENT", "from-env")
    monkeypatch.setenv("CANARYML_ROUTER_CANARY_WEIGHT", "20")
    monkeypatch.setenv("CANARYML_ROUTER_ADMIN", "true")
    monkeypatch.setenv("CANARYML_ROUTER_UPSTREAMS", "stable=http://env")
    probe, seen = _probe()
    argv = ["router", "--canary-weight", "40", "--upstream", "stable=http://a"]
    argv += ["--upstream", "canary=http://b", "--no-admin"]
    result = CliRunner().invoke(probe, argv)
    assert result.exit_code == 0, result.output
    (settings,) = seen
    assert settings.canary_weight == 40 and settings.admin is False
    assert settings.upstreams == {"stable": "http://a", "canary": "http://b"}
    assert settings.model_deployment == "from-env"
    assert settings.shadow_percent == 0 and settings.host == "0.0.0.0"


def test_invalid_settings_exit_2_naming_the_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("CANARYML_")]:
        monkeypatch.delenv(name)
    probe, seen = _probe()
    argv = ["router", "--model-deployment", "m", "--upstream", "stable=http://a"]
    result = CliRunner().invoke(probe, [*argv, "--canary-weight", "101", "--max-mirrors", "-1"])
    assert result.exit_code == 2 and not seen
    assert result.output.strip() == (
        "error: invalid settings: canary_weight: Input should be less than or equal to 100; "
        "max_mirrors: Input should be greater than or equal to 0"
    )


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (str | None, str),
        (int, int),
        (float, float),
        (bool, bool),
        (Literal["a", "b"], str),
        (dict[str, str], list[str]),
        (list[str], list[str]),
    ],
)
def test_command_line_types(annotation: Any, expected: Any) -> None:
    assert command_line_type(annotation) == expected


def test_a_field_without_a_command_line_type_is_refused() -> None:
    with pytest.raises(TypeError, match="no command-line option"):
        command_line_type(int | str)


def test_environment_names_follow_pydantic_settings() -> None:
    assert environment_names(ServerSettings, "model_sha256") == ["CANARYML_MODEL_SHA256"]
    assert environment_names(RouterSettings, "port") == ["CANARYML_ROUTER_PORT"]
    assert environment_names(RouterSettings, "model_deployment") == [
        "CANARYML_ROUTER_MODEL_DEPLOYMENT",
        "CANARYML_MODEL_DEPLOYMENT",
    ]


def test_connection_limits_are_declared_once_and_follow_the_programs_own_options() -> None:
    shared = list(ConnectionSettings.model_fields)
    for command, settings in SETTINGS.items():
        assert issubclass(settings, ConnectionSettings)
        if command == "router":  # every router field is a flag: the shared ones come last
            flags = [_field(command, p) for p in _params(command) if p.name != "help"]
            assert flags[-len(shared) :] == shared
    # The router narrows two fields and keeps the others as declared.
    assert ServerSettings.model_fields["max_concurrency"].default == 1000
    assert RouterSettings.model_fields["max_concurrency"].default == 2000
    with pytest.raises(ValueError, match="max_body_bytes"):
        RouterSettings(model_deployment="m", upstreams={"stable": "http://a"}, max_body_bytes=2**40)
    for settings in (ServerSettings, RouterSettings):
        with pytest.raises(ValueError, match="at least max_body_bytes"):
            settings(
                model_uri="m",
                model_deployment="m",
                upstreams={"stable": "http://a"},
                max_body_bytes=4096,
                body_budget_bytes=2048,
            )
