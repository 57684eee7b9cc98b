"""One line for each mistake Hydra finds while it composes the config from the command line.

Hydra prints these as 5 to 14 lines and exits 1; ``describe`` turns one into a line that names
the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
import typing

from hydra.errors import MissingConfigException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

_TYPE_WORDS = {"Float": "a number", "Integer": "a whole number", "Boolean": "true or false", "String": "a string"}


def describe(error: BaseException) -> str:
    """What went wrong and what is allowed, on one line."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, name = error.missing_cfg_file.rpartition("/")
        choices = ", ".join(error.options or ()) or "none"
        key = group.replace("/", ".") or "config"
        return f"{key}={name}: no such {key} config; choose one of {choices}"
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and getattr(cause, "full_key", None):
        known = _fields(getattr(cause, "object_type", None))
        allowed = f"; known keys: {', '.join(known)}" if known else ""
        return f"{cause.full_key} is not a setting here{allowed}"
    if isinstance(cause, ValidationError) and getattr(cause, "full_key", None):
        first = str(getattr(cause, "msg", cause)).splitlines()[0]
        expected = next((w for t, w in _TYPE_WORDS.items() if first.endswith(f"converted to {t}")), None)
        if expected:
            return f"{cause.full_key}={cause.value}: must be {expected}"
        allowed = re.search(r"expected one of \[(.*)\]", first)
        if allowed:
            return f"{cause.full_key}={cause.value}: must be one of {allowed.group(1)}"
        return f"{cause.full_key}={cause.value}: {first}"
    return " ".join(str(error).replace("\n", "; ").split())


def _fields(schema: typing.Any) -> list[str]:
    if not dataclasses.is_dataclass(schema):
        return []
    return sorted(f.name for f in dataclasses.fields(schema) if not f.name.startswith("_"))
