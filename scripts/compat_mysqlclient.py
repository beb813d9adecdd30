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

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from compat_common import report, run_pytest, sandbox_and_proxy


def _run(src: Path, port: int, label: str, extra: list[str]) -> tuple[int, int, str]:
    cnf = src / f"{label}.cnf"
    cnf.write_text("[MySQLdb-tests]\nhost = 127.0.0.1\n"
                   f"port = {port}\nuser = app\npassword = app\ndatabase = test\n"
                   "default-character-set = utf8mb4\n")
    return run_pytest(src, "tests", {"TESTDB": str(cnf)}, src.parent / f"{label}.log", extra)


def _same(cfg: dict[str, Any]) -> None:
    pass


def main(argv: list[str]) -> int:
    if not argv or not (Path(argv[0]) / "tests" / "configdb.py").is_file():
        print(__doc__)
        return 2
    work = Path(tempfile.mkdtemp(prefix="compat-mysqlclient-"))
    src = work / "mysqlclient"
    shutil.copytree(Path(argv[0]) / "tests", src / "tests")
    setup = ["CREATE DATABASE IF NOT EXISTS test", "GRANT ALL ON test.* TO 'app'@'%'"]
    with sandbox_and_proxy(work, setup, _same) as (sb, port):
        d = _run(src, sb.primary_port, "direct", argv[1:])
        p = _run(src, port, "proxy", argv[1:])
    report(work, d, p)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
