"""The modules every statement runs through, compiled to C with mypyc at install (setup.py
reads `HOT`; README: why). They are the same mypy-checked source: compiled, a module runs the
lane's per-statement work in about two thirds of the CPU.

Python loads a compiled module in preference to its source, so a module edited after the build
would be silently ignored: the build records each source's hash (`record`), `stale()` names the
modules whose source changed since, and the CLI and the tests refuse to run on them (`make deps`
rebuilds). Stdlib only: setup.py and scripts/install-deps.sh run this file before anything is
installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

HOT = ("exec/fastlane", "exec/account", "backends/lease", "backends/backend", "backends/reply", "net/protocol", "plan/plan",
       "net/wire", "engines/readsplit", "plan/digest", "core/metrics", "plan/classify", "plan/hotshape",
       "core/gtid", "engines/hotalloc", "engines/hotkeys", "engines/hotauto", "engines/hotpick",
       "exec/lanemerge", "exec/lazybegin", "engines/hotmember", "backends/results",
       "exec/laneconfirm", "net/tracking", "session/hold", "session/session", "exec/answers",
       "engines/hotmerge", "backends/confirms", "engines/durability", "engines/escrow")

_HERE = Path(__file__).resolve().parent


def sources(root: Path = _HERE) -> list[Path]:
    return [root / f"{m}.py" for m in HOT]


RECORD = "compiled.sha1"  # written by setup.py with the build, beside the modules; not in git


def _digest(root: Path, m: str) -> str:
    return hashlib.sha1((root / f"{m}.py").read_bytes()).hexdigest()


def record(root: Path = _HERE) -> None:
    (root / RECORD).write_text("".join(f"{m} {_digest(root, m)}\n" for m in HOT))


def built(root: Path = _HERE) -> list[str]:
    """The hot modules that have a compiled build beside their source."""
    return [m for m in HOT if any(root.glob(f"{m}.*.so"))]


def remove_built(root: Path = _HERE) -> None:
    """For a plain-Python install: a compiled module left from before would shadow its source."""
    for m in HOT:
        for so in root.glob(f"{m}.*.so"):
            so.unlink()
    (root / RECORD).unlink(missing_ok=True)


def unlisted(root: Path = _HERE) -> list[Path]:
    """Extensions of modules no longer in HOT (left by an earlier build): they would shadow
    their source as silently as a stale one."""
    hot = {f"{m}." for m in HOT}
    return [so for so in root.rglob("*.so")
            if not any(str(so.relative_to(root)).startswith(h) for h in hot)]


def remove_unlisted(root: Path = _HERE) -> None:
    for so in unlisted(root):
        so.unlink()


def stale(root: Path = _HERE) -> list[str]:
    """Compiled modules whose source changed after the build, and extensions of modules no
    longer compiled."""
    rec = root / RECORD
    done = dict(line.split() for line in rec.read_text().splitlines()) if rec.exists() else {}
    return ([m for m in built(root) if done.get(m) != _digest(root, m)]
            + [str(so.relative_to(root)) for so in unlisted(root)])


def loaded() -> list[str]:
    """The hot modules this process runs (or will run, once imported) compiled."""
    out = []
    for m in HOT:
        name = "proxy." + m.replace("/", ".")
        mod = sys.modules.get(name)
        origin = getattr(mod, "__file__", None) if mod else getattr(
            importlib.util.find_spec(name), "origin", None)
        if str(origin or "").endswith(".so"):
            out.append(m)
    return out


if __name__ == "__main__":  # install-deps.sh: the files whose change needs a rebuild
    print("\n".join(str(p) for p in sources()))
