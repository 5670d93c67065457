"""Command-line arguments generated from config dataclasses, so help and defaults are written once.

Each field becomes `--field-name` (or its `flag=` metadata), typed from its annotation: Literal
fields get choices, booleans `--x/--no-x`, tuples of strings a comma list (or a repeatable flag
with `repeat=True`), nested dataclasses are flattened. Arguments default to "not given", so a
config is built from a base (the library's defaults, or a saved run) plus only the flags the
user typed.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Iterator
from typing import Any, Literal, get_args, get_origin

from .config import from_dict

_UnionType = type(int | None)


def _fields(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted name, field, type) of every leaf field, nested dataclasses flattened."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _fields(hint, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hint


def _base_type(hint: Any) -> Any:
    if get_origin(hint) in (typing.Union, _UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        return str if str in options else options[0]
    return hint


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING and f.default is not None:
        value = f.default
        return f" (default: {','.join(value) if isinstance(value, tuple) else value})"
    return ""


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (), dest_prefix: str = "",
                         required: tuple[str, ...] = ()) -> None:
    """Add one argument per field of `cls` (except `skip` and fields with `cli=False`)."""
    for name, f, hint in _fields(cls):
        if name in skip or f.metadata.get("cli") is False:
            continue
        flag = "--" + f.metadata.get("flag", name.rsplit(".", 1)[-1].replace("_", "-"))
        kind = _base_type(hint)
        options: dict[str, Any] = {"dest": dest_prefix + name, "default": argparse.SUPPRESS,
                                   "help": f.metadata.get("help", "") + _default_text(f)}
        if name in required:
            options["required"] = True
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif get_origin(kind) is Literal:
            options["choices"] = get_args(kind)
        elif get_origin(kind) is tuple:
            options["action"] = "append" if f.metadata.get("repeat") else None
            options["type"] = None if f.metadata.get("repeat") else _comma_list
        else:
            options["type"] = kind if kind in (int, float) else str
        if "action" not in options or options["action"] == "append":
            options["metavar"] = name.rsplit(".", 1)[-1].upper()
        parser.add_argument(flag, **{k: v for k, v in options.items() if v is not None})


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def given(args: argparse.Namespace, dest_prefix: str = "") -> dict[str, Any]:
    """The flags the user typed, as a nested dict (dotted names unfolded), for `dest_prefix` only."""
    out: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if not dest.startswith(dest_prefix):
            continue
        parts = dest[len(dest_prefix):].split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = tuple(value) if isinstance(value, list) else value
    return out


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` laid over it, nested dicts merged key by key."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def config_from_args(cls: type, args: argparse.Namespace, base: dict[str, Any] | None = None, source: str = "arguments",
                     dest_prefix: str = "") -> Any:
    """Build `cls` from `base` (else its defaults) and the fields given on the command line."""
    fields = {f.name for f in dataclasses.fields(cls)}
    overrides = {k: v for k, v in given(args, dest_prefix).items() if k in fields}
    return from_dict(cls, merged(base or {}, overrides), source)
