"""Type checks for configuration values that bypass argparse.

TRL's parser turns a YAML file's values into the parser's *defaults*, and argparse converts a default with the
option's `type` only when the default is a string: `output_dir: 0`, `warmup_steps: {a: 1}` or `logging_steps: []`
reach the dataclasses unconverted and fail deep inside `TrainingArguments.__post_init__` (a `TypeError` about
`os.fspath` or `'>' not supported`), far from the key that caused them. `check_value_types` compares each value with
its field's annotation first, so the error names the key, what it expects and what it found.
"""

from __future__ import annotations

import enum
import types
import typing
from dataclasses import fields
from typing import Any


def check_value_types(dataclass_types, config: dict, source: str, error: type[Exception]) -> None:
    """Raise `error("{source}: {key}: expected ..., found ...")` for the first value its field cannot take.

    Strings are left to argparse, which converts them with the option's own type (and names the option when it
    cannot); keys that no field has are left to the unknown-key check.
    """
    annotations = {}
    for dataclass_type in dataclass_types:
        hints = typing.get_type_hints(dataclass_type)
        annotations.update({spec.name: hints[spec.name] for spec in fields(dataclass_type) if spec.name in hints})
    for key, value in config.items():
        annotation = annotations.get(key)
        if annotation is None or isinstance(value, str) or _accepts(annotation, value):
            continue
        raise error(f"{source}: {key}: expected {_describe(annotation)}, found {type(value).__name__} {value!r:.80}")


def _accepts(annotation, value: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(option, value) for option in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (list, tuple, set):
        (item, *_) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list) and all(_accepts(item, element) for element in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, annotation) or value in {member.value for member in annotation}
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # an annotation this check does not understand: leave the value to the dataclass


def _describe(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(annotation))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(annotation)))
    if origin in (list, tuple, set):
        (item, *_) = typing.get_args(annotation) or (Any,)
        return f"a list of {_describe(item)}"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))
