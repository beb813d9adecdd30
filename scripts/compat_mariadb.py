"""Run MariaDB Connector/Python's own test suite directly against MariaDB and through the proxy.

    scripts/compat-mariadb.sh PATH-TO-MARIADB-CONNECTOR-PYTHON-SOURCE [pytest args...]

The suite (`testing/test` of github.com/mariadb-corporation/mariadb-connector-python, matching
the installed `mariadb` package) tests the driver against a server: binary protocol, server-side
cursors, executemany through COM_STMT_BULK_EXECUTE, extended type metadata, session tracking,
change_user, TLS. It is not ours to copy: this script copies a checkout's `testing` directory
to a temporary one, starts a throwaway sandbox and a proxy (TLS, accounts read from MariaDB:
the suite creates users and logs in as them), and runs it on both; the last lines are
`direct: N passed, M failed` and `proxy: N passed, M failed`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from compat_common import report, run_pytest, sandbox_and_proxy


def _accounts(cfg: dict[str, Any]) -> None:
    cfg["users"] = []
    cfg["auth"] = {"mode": "backend", "user": "monitor", "password": "compat-monitor",
                   "refresh_s": 5}


def _env(port: int) -> dict[str, str]:
    return {"TEST_DB_USER": "app", "TEST_DB_PASSWORD": "app", "TEST_DB_HOST": "127.0.0.1",
            "TEST_DB_PORT": str(port), "TEST_DB_DATABASE": "testp"}


def main(argv: list[str]) -> int:
    if not argv or not (Path(argv[0]) / "testing" / "test").is_dir():
        print(__doc__)
        return 2
    work = Path(tempfile.mkdtemp(prefix="compat-mariadb-"))
    src = work / "testing"
    shutil.copytree(Path(argv[0]) / "testing", src)
    setup = [
        "CREATE DATABASE IF NOT EXISTS testp",
        "CREATE USER IF NOT EXISTS 'monitor'@'%' IDENTIFIED BY 'compat-monitor'",
        "GRANT ALL ON *.* TO 'monitor'@'%'",
    ]
    with sandbox_and_proxy(work, setup, _accounts) as (sb, port):
        d = run_pytest(src, "test", _env(sb.primary_port), work / "direct.log", argv[1:])
        p = run_pytest(src, "test", _env(port), work / "proxy.log", argv[1:])
    report(work, d, p)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
