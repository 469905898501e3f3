"""Typed settings: pydantic checks each field of the config dataclasses against its annotation.

``BFCLConfig`` and ``TrainConfig`` stay plain dataclasses (the rest of the code
builds and reads them as such); their annotations carry the allowed choices
(``Literal``) and ranges (``Field(ge=...)``), and :func:`check_fields` validates
every value against them with a pydantic ``TypeAdapter`` per field. So a YAML
file, a ``--set`` override and a direct ``TrainConfig(batch_size=0)`` are all
refused the same way, with a :class:`~bfcl.errors.ConfigError` that names the
key, the value and what was expected.
"""

from __future__ import annotations

import functools
import os
import re
import types
import typing
from dataclasses import MISSING, Field as DataclassField, fields
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError

from bfcl.errors import ConfigError


def _not_bool(value: Any) -> Any:
    # pydantic's lax mode reads True as 1; a bool where a number belongs is a mistake.
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    return value


def _path_str(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]
NonNegInt = Annotated[Int, Field(ge=0)]
PosInt = Annotated[Int, Field(ge=1)]
NonNegFloat = Annotated[Float, Field(ge=0)]
PosFloat = Annotated[Float, Field(gt=0)]
PathStr = Annotated[str, BeforeValidator(_path_str)]
"""A file or folder name; ``pathlib.Path`` values are accepted and stored as ``str``."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


@functools.cache
def _adapters(cls: type) -> dict[str, TypeAdapter]:
    return {f.name: TypeAdapter(_hints(cls)[f.name]) for f in fields(cls)}


def _plain(hint: Any) -> Any:
    """``Annotated[X, ...]`` without its metadata: X."""
    return typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _expected(error: ValidationError) -> str:
    """pydantic's first message, phrased as what was expected."""
    err = error.errors(include_url=False)[0]
    msg = str(err["msg"])
    msg = re.sub(r"^Value error, ", "", msg)
    msg = re.sub(r"^Input should be (greater|less)", r"expected a value \1", msg)
    msg = re.sub(r"^Input should be ", "expected ", msg)
    msg = re.sub(r"^String should match pattern ", "expected a string matching ", msg)
    loc = [str(x) for x in err["loc"]]
    if loc:  # an item inside a list: say which
        msg = f"item {'.'.join(loc)} ({_show(err['input'])}): {msg}"
    return msg


def validate_value(cls: type, name: str, value: Any, key: str) -> Any:
    """``value`` checked and converted to field ``name``'s type; ``key`` names it in the error."""
    try:
        return _adapters(cls)[name].validate_python(value)
    except ValidationError as e:
        raise ConfigError(f"{key}={_show(value)}: {_expected(e)}") from None


def check_fields(obj: Any, section: str) -> None:
    """Validate (and normalise in place) every field of a config dataclass instance."""
    for name in _adapters(type(obj)):
        value = getattr(obj, name)
        setattr(obj, name, validate_value(type(obj), name, value, f"{section}.{name}"))


def field_default(f: DataclassField) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def accepts_str(cls: type, name: str) -> bool:
    """True when field ``name`` holds text (str, optional str or a choice of strings)."""
    hint = _plain(_hints(cls)[name])
    if hint is str or typing.get_origin(hint) is typing.Literal:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # str | None
        return any(_plain(arg) is str for arg in typing.get_args(hint))
    return False


def is_list(cls: type, name: str) -> bool:
    return typing.get_origin(_plain(_hints(cls)[name])) is list
