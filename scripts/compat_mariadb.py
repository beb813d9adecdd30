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

import sys

from compat_common import MONITOR_SQL, backend_accounts, compare, copy_suite, run_pytest


def _env(port: int) -> dict[str, str]:
    return {"TEST_DB_USER": "app", "TEST_DB_PASSWORD": "app", "TEST_DB_HOST": "127.0.0.1",
            "TEST_DB_PORT": str(port), "TEST_DB_DATABASE": "testp"}


def main(argv: list[str]) -> int:
    if (copied := copy_suite(argv, "testing/test", "mariadb", "testing")) is None:
        print(__doc__)
        return 2
    work, src = copied[0], copied[1] / "testing"
    return compare(work, ["CREATE DATABASE IF NOT EXISTS testp", *MONITOR_SQL],
                   backend_accounts,
                   lambda port, log: run_pytest(src, "test", _env(port), log, argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
