"""Run aiomysql's own test suite directly against MariaDB and through the proxy.

    scripts/compat-aiomysql.sh PATH-TO-AIOMYSQL-SOURCE [pytest args...]

The suite (`tests/` of github.com/aio-libs/aiomysql at the tag of the installed version) drives
the asyncio driver against a server: cursors (buffered, unbuffered, dict, deserializing),
pools, `nextset`, LOAD DATA LOCAL, bulk inserts, connection loss, TLS. It logs in as `root`
with `MYSQL_ROOT_PASSWORD` and creates its databases itself. It is not ours to copy: this
script copies the checkout's `tests` to a temporary directory, starts a throwaway sandbox and
a proxy (TLS, accounts read from MariaDB), and runs it on both, each on the asyncio and the
uvloop loop (the suite's own parametrisation). `tests/sa` needs aiomysql's pin of SQLAlchemy
(`.venv/bin/pip install SQLAlchemy==1.3.24`; not a dependency of the proxy).
The last lines are `direct: N passed, M failed` and `proxy: N passed, M failed`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from compat_common import report, run_pytest, sandbox_and_proxy

ROOT_PASSWORD = "compat-root"


def _accounts(cfg: dict[str, Any]) -> None:
    cfg["users"] = []
    cfg["auth"] = {"mode": "backend", "user": "monitor", "password": "compat-monitor",
                   "refresh_s": 5}


def _run(src: Path, port: int, label: str, extra: list[str]) -> tuple[int, int, str]:
    return run_pytest(src, "tests", {"MYSQL_ROOT_PASSWORD": ROOT_PASSWORD},
                      src.parent / f"{label}.log",
                      [f"--mysql-address=127.0.0.1:{port}", *extra])


def main(argv: list[str]) -> int:
    if not argv or not (Path(argv[0]) / "tests" / "conftest.py").is_file():
        print(__doc__)
        return 2
    work = Path(tempfile.mkdtemp(prefix="compat-aiomysql-"))
    src = work / "aiomysql"
    shutil.copytree(Path(argv[0]) / "tests", src / "tests")
    setup = [
        f"CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY '{ROOT_PASSWORD}'",
        "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION",
        "CREATE USER IF NOT EXISTS 'monitor'@'%' IDENTIFIED BY 'compat-monitor'",
        "GRANT ALL ON *.* TO 'monitor'@'%'",
        "SET GLOBAL local_infile = 1",
    ]
    with sandbox_and_proxy(work, setup, _accounts) as (sb, port):
        d = _run(src, sb.primary_port, "direct", argv[1:])
        p = _run(src, port, "proxy", argv[1:])
    report(work, d, p)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
