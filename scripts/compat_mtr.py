"""Run MariaDB's own regression tests (`mysql-test`'s main suite, Debian package `mariadb-test`)
directly against a sandbox and through the proxy with `--extern`; print both counts.

    scripts/compat-mtr.sh main.sp main.sp-cursor ...   # default: every test of the main suite

mtr's `--extern` runs a test's .test file against a running server and compares its output
with the .result file. With `--extern` mtr cannot restart the server between tests, and some
tests leave accounts behind (an anonymous ''@'127.0.0.1' shadows every TCP login after it): so
each test runs on its own, directly and then through the proxy, and the accounts are put back
as root between runs. Some tests cannot run with `--extern` at all (they restart the server,
read its error log, need a bootstrapped `mtr` schema): they fail directly too and are not
counted against the proxy. The last lines are machine-readable: `direct: N passed, M failed`
and `proxy: N passed, M failed`, then the tests that pass directly but not through the proxy.

Tests that cannot pass through any proxy, with the reason, are listed in `THROUGH_NO_PROXY`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pymysql
from compat_common import sandbox_and_proxy

MTR_DIR = Path("/usr/share/mysql/mysql-test")

# What no proxy can give: result files that compare per-connection server counters
# (SHOW STATUS of Questions, Handler_*, Com_*, Qcache_*), which count the backend connection's
# work, the proxy's own service queries included.
THROUGH_NO_PROXY: dict[str, str] = {
    "main.handler_read_last": "SHOW STATUS LIKE 'HANDLER_READ%' counts the backend connection's "
                              "reads, the proxy's own queries on it included",
    "main.win_big-mdev-10092": "reads the session's Sort_merge_passes after a SELECT: the "
                               "SELECT ran on a replica's connection (read split), the "
                               "counter is per connection",
}

BATCH = 20
_ROOT_BACK = [
    "CREATE USER IF NOT EXISTS 'root'@'localhost'",
    "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket",
    "GRANT ALL PRIVILEGES ON *.* TO 'root'@'localhost' WITH GRANT OPTION",
    "GRANT PROXY ON ''@'%' TO 'root'@'localhost' WITH GRANT OPTION",
]
_RESTORE = [
    "DELETE FROM mysql.global_priv WHERE User = ''", "FLUSH PRIVILEGES",
    "CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'app'",
    "ALTER USER 'app'@'%' IDENTIFIED BY 'app'",
    "GRANT ALL PRIVILEGES ON *.* TO 'app'@'%' WITH GRANT OPTION",
    # a failed test leaves its tables behind: each run starts with an empty `test`
    "CREATE DATABASE IF NOT EXISTS test", "CREATE DATABASE IF NOT EXISTS mtr",
    "SET GLOBAL log_bin_trust_function_creators = 1",  # as mtr's own server config has it
    # mtr's bootstrap creates this (it filters the error log, which --extern does not check);
    # many tests call it first and fail without it
    "CREATE TABLE IF NOT EXISTS mtr.test_suppressions (pattern VARCHAR(255))",
    "CREATE PROCEDURE IF NOT EXISTS mtr.add_suppression(pattern VARCHAR(255)) "
    "INSERT INTO mtr.test_suppressions VALUES (pattern)",
]


def _run(port: int, tests: list[str], vardir: Path, log: Any) -> dict[str, str]:
    """Each test's verdict ('pass', 'fail', 'skipped'; 'error' when mtr printed none)."""
    cmd = [str(MTR_DIR / "mariadb-test-run"), "--extern", "host=127.0.0.1", "--extern",
           f"port={port}", "--extern", "user=app", "--extern", "password=app", "--force",
           "--max-test-fail=0", "--testcase-timeout=1", f"--vardir={vardir}", *tests]
    shutil.rmtree(vardir, ignore_errors=True)
    out = subprocess.run(cmd, cwd=MTR_DIR, capture_output=True, text=True, errors="replace")
    text = out.stdout + out.stderr
    log.write(text)
    got = dict.fromkeys(tests, "error")
    for m in re.finditer(r"^(\S+?)(?:\s+'\S+')?\s+(?:w\d+\s+)?\[ (pass|fail|skipped) \]",
                         text, re.M):
        if m.group(1) in got:
            got[m.group(1)] = m.group(2)
    return got


def _stops_server(test: str) -> bool:
    suite, _, name = test.partition(".")
    f = MTR_DIR / suite / f"{name}.test"
    text = f.read_text(errors="replace") if f.exists() else ""
    return _STOPS.search(text) is not None


_STOPS = re.compile(r"shutdown_server|restart_mysqld|kill_mysqld|^\s*shutdown|restart_server|"
                    r"crash_mysqld|kill_and_restart|start_mysqld|shutdown_mysqld|--exec.*kill",
                    re.I | re.M)


def _main_suite() -> list[str]:
    return sorted(f"main.{p.stem}" for p in (MTR_DIR / "main").glob("*.test"))


def _empty_test_schema(sb: Any) -> None:
    """A failed test leaves its tables behind: the next starts with an empty `test` (files a
    test left in its directory keep DROP DATABASE from working: then table by table)."""
    try:
        sb.primary.sql("DROP DATABASE IF EXISTS test", "CREATE DATABASE test")
    except pymysql.MySQLError:
        rows = sb.primary.sql("SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES "
                              "WHERE TABLE_SCHEMA = 'test'")
        for name, kind in rows:
            what = "VIEW" if kind == "VIEW" else "TABLE"
            try:
                sb.primary.sql(f"DROP {what} IF EXISTS `test`.`{str(name).replace('`', '``')}`")
            except pymysql.MySQLError:
                pass
        sb.primary.sql("CREATE DATABASE IF NOT EXISTS test")


class _NoLogin(Exception):
    """The server cannot be given its accounts back: a test emptied, replaced or broke the
    grant tables (bad_user_table, system table tests)."""


def _run_batches(work: Path, todo: list[list[str]], got: dict[str, tuple[str, str]],
                 single: bool) -> list[list[str]]:
    """Run batches on one sandbox and proxy; the batches left when the server became unusable."""
    box = Path(tempfile.mkdtemp(prefix="run", dir=work))  # a new sandbox each time
    with sandbox_and_proxy(box, _RESTORE, lambda cfg: None) as (sb, port), \
            open(work / "direct.log", "a") as dlog, open(work / "proxy.log", "a") as plog:
        for r in sb.replicas:
            r.sql("SET GLOBAL log_bin_trust_function_creators = 1")

        def restore() -> None:
            """Accounts back; a test that shut the server down (SHUTDOWN, kill) restarts it;
            one that changed root's login gets it back through `app` (ALL, WITH GRANT)."""
            try:
                sb.primary.sql(*_RESTORE)
                _empty_test_schema(sb)
                return
            except Exception:  # noqa: BLE001 - below: why it failed decides the repair
                pass
            try:
                try:
                    sb.primary.start()
                except RuntimeError:  # it runs: root's login was changed by the test
                    app = pymysql.connect(host="127.0.0.1", port=sb.primary_port, user="app",
                                          password="app", autocommit=True)
                    with app.cursor() as cur:
                        for sql in _ROOT_BACK:
                            cur.execute(sql)
                    app.close()
                sb.primary.sql(*_RESTORE)
                _empty_test_schema(sb)
            except (pymysql.MySQLError, RuntimeError) as e:  # grant tables broken or emptied
                raise _NoLogin(str(e)) from None

        def both(batch: list[str]) -> dict[str, tuple[str, str]]:
            d = _run(sb.primary_port, batch, work / "var", dlog)
            restore()
            p = _run(port, batch, work / "var", plog)
            restore()
            return {t: (d[t], p[t]) for t in batch}

        for n, batch in enumerate(todo):
            try:
                results = both(batch)
                for t, (d, p) in results.items():
                    if not single and d != p:
                        d, p = both([t])[t]
                    got[t] = (d, p)
                    print(f"{t}: direct {d}, proxy {p}", flush=True)
            except _NoLogin as e:
                left = [t for t in batch if t not in got]
                print(f"(no login after {left[0] if left else batch[-1]}: {e}; new sandbox)",
                      flush=True)
                if len(batch) > 1:  # run them alone: the one that broke it is found
                    return [[t] for t in left] + todo[n + 1:]
                got[batch[0]] = got.get(batch[0], ("error", "error"))
                return todo[n + 1:]
    return []


def main(tests: list[str]) -> int:
    if not MTR_DIR.exists() or shutil.which("perl") is None:
        print("needs Debian's mariadb-test package (apt-get install mariadb-test)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="compat-mtr-"))
    tests = tests or _main_suite()
    got: dict[str, tuple[str, str]] = {}
    # A test that may shut the server down (SHUTDOWN, kill, restart) runs alone: the rest of a
    # batch would wait for a server that is gone. The others run in batches of BATCH sharing
    # mtr's start-up; a test whose verdicts differ runs again alone on both sides (an earlier
    # test of its batch may have left an account or a setting behind on one side only).
    alone = [t for t in tests if _stops_server(t)]
    rest = [t for t in tests if t not in alone]
    todo = [[t] for t in alone] + [rest[i:i + BATCH] for i in range(0, len(rest), BATCH)]
    while todo:  # a test that leaves the server with no login (bad_user_table): a new sandbox
        todo = _run_batches(work, todo, got, single=len(tests) == 1)
    print(f"work dir: {work} (direct.log, proxy.log, proxy.out)")
    only = sorted(t for t, (d, p) in got.items() if d == "pass" and p != "pass")
    for side, i in (("direct", 0), ("proxy", 1)):
        n_pass = sum(1 for r in got.values() if r[i] == "pass")
        n_fail = sum(1 for r in got.values() if r[i] in ("fail", "error"))
        print(f"{side}: {n_pass} passed, {n_fail} failed")
    for t in only:
        print(f"only direct: {t}" + (f" ({THROUGH_NO_PROXY[t]})" if t in THROUGH_NO_PROXY else ""))
    return 0 if all(t in THROUGH_NO_PROXY for t in only) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
