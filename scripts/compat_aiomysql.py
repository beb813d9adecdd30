"""Run aiomysql's own test suite directly against MariaDB and through the proxy.

    scripts/compat-aiomysql.sh PATH-TO-AIOMYSQL-SOURCE [pytest args...]

The suite (`tests/` of github.com/aio-libs/aiomysql at the tag of the installed version) drives
the asyncio driver against a server: cursors (buffered, unbuffered, dict, deserializing),
pools, `nextset`, LOAD DATA LOCAL, bulk inserts, connection loss, TLS. It logs in as `root`
with `MYSQL_ROOT_PASSWORD` and creates its databases itself. It is not ours to copy: this
script copies the checkout's `tests` to a temporary directory, starts a throwaway sandbox and
a proxy (TLS, accounts read from MariaDB), and runs it on both, each on the asyncio and the
uvloop loop (the suite's own parametrisation). It needs aiomysql's pin of SQLAlchemy
(`.venv/bin/pip install SQLAlchemy==1.3.24`; not a dependency of the proxy): `tests/sa`,
`test_async_with.py` and `test_async_iter.py` import it, and without it pytest stops at
collection and runs nothing.
The last lines are `direct: N passed, M failed` and `proxy: N passed, M failed`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from compat_common import MONITOR_SQL, Verdicts, backend_accounts, compare, copy_suite, run_pytest

ROOT_PASSWORD = "compat-root"


def _run(src: Path, port: int, log: Path, extra: list[str]) -> Verdicts:
    return run_pytest(src, "tests", {"MYSQL_ROOT_PASSWORD": ROOT_PASSWORD}, log,
                      [f"--mysql-address=127.0.0.1:{port}", *extra])


def main(argv: list[str]) -> int:
    if (copied := copy_suite(argv, "tests/conftest.py", "aiomysql", "tests")) is None:
        print(__doc__)
        return 2
    work, src = copied
    setup = [
        f"CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY '{ROOT_PASSWORD}'",
        "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION",
        *MONITOR_SQL,
        "SET GLOBAL local_infile = 1",
    ]
    return compare(work, setup, backend_accounts,
                   lambda port, log: _run(src, port, log, argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
