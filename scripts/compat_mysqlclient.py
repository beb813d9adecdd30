"""Run mysqlclient's own test suite directly against MariaDB and through the proxy.

    scripts/compat-mysqlclient.sh PATH-TO-MYSQLCLIENT-SOURCE [pytest args...]

mysqlclient (`MySQLdb`) is the C client library's Python binding (Debian's libmariadb here), so
its suite (`tests/` of github.com/PyMySQL/mysqlclient: DB-API 2.0 conformance, the `_mysql`
module, cursors, errors, date/time types) checks the proxy against the same library the
`mariadb` CLI, PHP's mysqli and most C programs use. It is not ours to copy: this script
copies the checkout's `tests` to a temporary directory, writes the option file the suite
reads (`TESTDB`) once for MariaDB and once for the proxy, starts a throwaway sandbox and a
proxy (TLS, the `app` account of conf/proxy.yaml), and runs it on both; the last lines are
`direct: N passed, M failed` and `proxy: N passed, M failed`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from compat_common import Verdicts, compare, copy_suite, run_pytest


def _run(src: Path, port: int, log: Path, extra: list[str]) -> Verdicts:
    cnf = src / f"{log.stem}.cnf"
    cnf.write_text("[MySQLdb-tests]\nhost = 127.0.0.1\n"
                   f"port = {port}\nuser = app\npassword = app\ndatabase = test\n"
                   "default-character-set = utf8mb4\n")
    return run_pytest(src, "tests", {"TESTDB": str(cnf)}, log, extra)


def main(argv: list[str]) -> int:
    if (copied := copy_suite(argv, "tests/configdb.py", "mysqlclient", "tests")) is None:
        print(__doc__)
        return 2
    work, src = copied
    setup = ["CREATE DATABASE IF NOT EXISTS test", "GRANT ALL ON test.* TO 'app'@'%'"]
    return compare(work, setup, lambda cfg: None,
                   lambda port, log: _run(src, port, log, argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
