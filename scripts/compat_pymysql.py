"""Run PyMySQL's own test suite directly against MariaDB and through the proxy; print both counts.

    scripts/compat-pymysql.sh PATH-TO-PYMYSQL-SOURCE [pytest args...]

PyMySQL's tests are not on PyPI and not ours to copy into this repository: this script copies a
source checkout to a temporary directory, starts a throwaway sandbox (primary + replica) and a
proxy with the default routing (`read_consistency: session`), creates what PyMySQL's CI creates
(`ci/docker-entrypoint-initdb.d`: databases test1/test2, user test2), writes its
`databases.json` once for MariaDB and once for the proxy, and runs pytest on each. The last
lines are machine-readable: `direct: N passed, M failed` and `proxy: N passed, M failed`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from compat_common import Verdicts, compare, copy_suite, run_pytest


def _databases(port: int) -> list[dict[str, object]]:
    return [
        {"host": "127.0.0.1", "port": port, "user": "app", "password": "app",
         "database": "test1", "use_unicode": True, "local_infile": True},
        {"host": "127.0.0.1", "port": port, "user": "test2", "password": "some password",
         "database": "test2"},
    ]


def _run(src: Path, port: int, log: Path, extra: list[str]) -> Verdicts:
    (src / "pymysql" / "tests" / "databases.json").write_text(json.dumps(_databases(port)))
    return run_pytest(src, "pymysql/tests", {"PYTHONPATH": str(src)}, log, extra)


def _users(cfg: dict[str, Any]) -> None:
    cfg["users"] = [{"name": "app", "password": "app"},
                    {"name": "test2", "password": "some password"}]


def main(argv: list[str]) -> int:
    if (copied := copy_suite(argv, "pymysql/tests", "PyMySQL")) is None:
        print(__doc__)
        return 2
    work, src = copied
    setup = [
        "CREATE DATABASE IF NOT EXISTS test1 DEFAULT CHARACTER SET utf8mb4",
        "CREATE DATABASE IF NOT EXISTS test2 DEFAULT CHARACTER SET utf8mb4",
        "CREATE USER IF NOT EXISTS test2 IDENTIFIED BY 'some password'",
        "GRANT ALL ON test2.* TO test2",
        "SET GLOBAL local_infile = 1",
    ]
    return compare(work, setup, _users, lambda port, log: _run(src, port, log, argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
