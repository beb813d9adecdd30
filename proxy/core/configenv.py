"""The config file's `${VAR}` / `${VAR:-default}` expansion, typed as YAML types a value
(config.py validates what comes out), and the error every config problem raises."""

from __future__ import annotations

import os
import re
from typing import Any


class ConfigError(ValueError):
    """A config problem, with the dotted key path of the offending value."""

    def __init__(self, path: str, msg: str) -> None:
        super().__init__(f"{path}: {msg}" if path else msg)
        self.path = path


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class EnvStr(str):
    """A value that was one `${VAR}` reference: a string where the key wants one, else read
    as the number or boolean it spells (the environment has only strings)."""


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def _from_env(v: Any, kind: type) -> Any:
    if not isinstance(v, EnvStr):
        return v
    t = v.strip()
    if kind is bool:
        return True if t.lower() in _TRUE else False if t.lower() in _FALSE else v
    try:
        return int(t) if kind is int else float(t)
    except ValueError:
        return v


def _expand_env(value: Any, path: str) -> Any:
    """`${VAR}` and `${VAR:-default}` in strings, as shells and compose read them (`:-` also
    takes the default when VAR is set but empty). A value that is one reference and nothing
    else is typed as YAML types it (`max_connections: ${POOL_MAX}` with POOL_MAX=200 is the
    number 200, `${TLS:-false}` a boolean: `EnvStr`, read as the type the key wants)."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            got = os.environ.get(name)
            if got is not None and (got != "" or default is None):
                return got
            if default is not None:
                return default
            raise ConfigError(path, f"environment variable {name} is not set")

        out = _ENV.sub(sub, value)
        return EnvStr(out) if out != value and _ENV.fullmatch(value) else out
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value
