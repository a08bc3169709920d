"""Command-line options generated from a program's settings class.

A program (`canaryml serve`, `canaryml router`) declares each setting once, as a field of its
pydantic-settings class: name, type, default, constraints and description. `settings_command`
turns the class into a typer command with one option per field: the flag is the field's name in
kebab case, the type the field's, the default shown in the help the field's default, the help
the field's description followed by the environment variables that also set it.

Precedence stays the settings class's own: the command hands it only the options given on the
command line, and the class reads every other field from the environment or takes its default
(flag over environment over default). Invalid settings end the command with exit code 2 and a
message that names each wrong field.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import typer
from pydantic import AliasChoices, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def _own_fields_first(settings_class: type[BaseSettings]) -> list[str]:
    """Every field, in declaration order, the most derived class's first: a program's own
    options lead its help, the shared ones (connection limits, even where narrowed) follow."""
    depth = {  # the deepest class that declares the field
        name: index
        for index, cls in enumerate(settings_class.__mro__)
        for name in getattr(cls, "__annotations__", {})
    }
    return sorted(settings_class.model_fields, key=lambda name: depth.get(name, 0))


def settings_command(
    settings_class: type[SettingsT],
    run: Callable[[SettingsT], None],
    *,
    fields: Sequence[str] | None = None,
    names: Mapping[str, str] | None = None,
    argument: str | None = None,
) -> Callable[..., None]:
    """A typer command that builds `settings_class` from its options and calls `run` with it.

    fields: the fields offered on the command line, in the order of the help (default: every
    field, the class's own first, then those of its bases); the others are read from the
    environment only.
    names: a parameter name where it is not the field's (`upstreams` as `--upstream`).
    argument: the field given as the positional argument instead of an option.
    The command's help is `run`'s docstring.
    """
    chosen = _own_fields_first(settings_class) if fields is None else list(fields)
    renamed = names or {}
    field_of = {renamed.get(field, field): field for field in chosen}
    parameters = [
        inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
        *(
            _parameter(settings_class, name, field, argument=field == argument)
            for name, field in field_of.items()
        ),
    ]

    def command(ctx: typer.Context, **given: Any) -> None:
        values = {
            field: given[name] for name, field in field_of.items() if _on_command_line(ctx, name)
        }
        run(load_settings(settings_class, values))

    # typer reads a command's parameters with inspect.signature, which honours __signature__.
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__doc__ = run.__doc__
    return command


def load_settings(settings_class: type[SettingsT], values: Mapping[str, Any]) -> SettingsT:
    """The settings from `values` (field: value), the environment and the defaults, in that
    order; invalid settings print what is wrong and exit with code 2."""
    try:
        return settings_class.model_validate(dict(values))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors()
        )
        typer.secho(f"error: invalid settings: {problems}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from error


def environment_names(settings_class: type[BaseSettings], field: str) -> list[str]:
    """The environment variables that set `field` (pydantic-settings' rule: the validation
    alias or aliases if any, else the class's prefix and the field's name)."""
    alias = settings_class.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return [choice for choice in alias.choices if isinstance(choice, str)]
    if isinstance(alias, str):
        return [alias]
    return [f"{settings_class.model_config.get('env_prefix', '')}{field}".upper()]


def command_line_type(annotation: Any) -> Any:
    """The option type of a field's type. A Literal stays text, so that pydantic names the
    allowed values; a list or dict becomes a repeatable option whose strings the settings
    class parses (TRACK=URL)."""
    members = [annotation]
    if get_origin(annotation) in (Union, types.UnionType):
        members = [member for member in get_args(annotation) if member is not type(None)]
    if len(members) == 1:
        (kind,) = members
        if get_origin(kind) is Literal:
            return str
        if get_origin(kind) in (list, dict) or kind in (list, dict):
            return list[str]
        if kind in (str, int, float, bool, Path):
            return kind
    raise TypeError(f"no command-line option for a field of type {annotation!r}")


def shown_default(field: FieldInfo) -> Any:
    """The default the help shows: the field's, or None when it has none or builds it."""
    if field.is_required() or field.default_factory is not None:
        return None
    return field.default


def _parameter(
    settings_class: type[BaseSettings], name: str, field_name: str, *, argument: bool
) -> inspect.Parameter:
    field = settings_class.model_fields[field_name]
    kind = command_line_type(field.annotation)
    default = shown_default(field)
    environment = ", ".join(environment_names(settings_class, field_name))
    help_text = f"{field.description or ''} (env: {environment})".strip()
    info: Any
    if argument:
        info = typer.Argument(default, help=help_text, show_default=default is not None)
    else:
        flag = "--" + name.replace("_", "-")
        declaration = f"{flag}/--no-{flag[2:]}" if kind is bool else flag
        info = typer.Option(default, declaration, help=help_text)
    annotation = kind if default is not None else kind | None
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation
    )


def _on_command_line(ctx: typer.Context, name: str) -> bool:
    """Whether the option was given as a flag; its default is only for the help, since the
    settings class reads the environment before falling back to the same default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"
