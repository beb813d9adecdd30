"""Run MariaDB's own regression tests (`mysql-test`'s main suite, Debian package `mariadb-test`)
directly against a sandbox and through the proxy with `--extern`; print both counts.

    scripts/compat-mtr.sh [TEST ...]        # default: every test of the main suite

mtr's `--extern` runs each test's .test file against a running server and compares its output
with the .result file. Some tests cannot run that way at all (they restart the server, read its
error log, need the `mtr` schema of a bootstrapped server): they fail directly too and are not
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

from compat_common import sandbox_and_proxy

MTR_DIR = Path("/usr/share/mysql/mysql-test")

# What no proxy can give: the result files compare per-connection server counters
# (SHOW STATUS of Questions, Handler_*, Com_*, Qcache_*), which count the proxy's own
# connections' work too.
THROUGH_NO_PROXY: dict[str, str] = {}


def _run(port: int, tests: list[str], vardir: Path, log: Path) -> tuple[set[str], set[str]]:
    cmd = [str(MTR_DIR / "mariadb-test-run"), "--extern", "host=127.0.0.1", "--extern",
           f"port={port}", "--extern", "user=mtr", "--extern", "password=mtr", "--force",
           "--max-test-fail=0", "--testcase-timeout=2", "--parallel=1", f"--vardir={vardir}",
           "--nowarnings", *(tests or ["--suite=main"])]
    out = subprocess.run(cmd, cwd=MTR_DIR, capture_output=True, text=True)
    text = out.stdout + out.stderr
    log.write_text(text)
    passed = set(re.findall(r"^(\S+)\s+(?:\S+\s+)?\[ pass \]", text, re.M))
    failed = set(re.findall(r"^(\S+)\s+(?:\S+\s+)?\[ fail \]", text, re.M))
    return passed, failed


def _configure(cfg: dict[str, Any]) -> None:
    cfg["users"] = [*cfg.get("users", []), {"name": "mtr", "password": "mtr"}]


def main(tests: list[str]) -> int:
    if not MTR_DIR.exists() or shutil.which("perl") is None:
        print("needs Debian's mariadb-test package (apt-get install mariadb-test)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="compat-mtr-"))
    setup = ["CREATE USER IF NOT EXISTS 'mtr'@'%' IDENTIFIED BY 'mtr'",
             "GRANT ALL ON *.* TO 'mtr'@'%' WITH GRANT OPTION",
             "CREATE DATABASE IF NOT EXISTS test", "CREATE DATABASE IF NOT EXISTS mtr"]
    with sandbox_and_proxy(work, setup, _configure) as (sb, port):
        d_pass, d_fail = _run(sb.primary_port, tests, work / "var-direct", work / "direct.log")
        p_pass, p_fail = _run(port, tests, work / "var-proxy", work / "proxy.log")
    print(f"work dir: {work} (direct.log, proxy.log, proxy.out)")
    only = sorted(d_pass - p_pass)
    known = [t for t in only if t in THROUGH_NO_PROXY]
    print(f"direct: {len(d_pass)} passed, {len(d_fail)} failed")
    print(f"proxy: {len(p_pass)} passed, {len(p_fail)} failed")
    for t in only:
        print(f"only direct: {t}" + (f" ({THROUGH_NO_PROXY[t]})" if t in known else ""))
    return 0 if len(only) == len(known) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
