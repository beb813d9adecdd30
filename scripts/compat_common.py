"""What the peer-suite scripts share: a throwaway sandbox (primary + replica) and a proxy with the
default routing (`read_consistency: session`) and TLS with the sandbox's CA, run as users run it;
and running pytest on a peer's test directory once directly and once through the proxy."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.tools.sandbox import Sandbox, free_port  # noqa: E402


@contextmanager
def sandbox_and_proxy(work: Path, setup_sql: list[str],
                      configure: Callable[[dict[str, Any]], None]) -> Iterator[tuple[Sandbox, int]]:
    """A sandbox with `setup_sql` run as root, and a proxy on the returned port
    (conf/proxy.yaml, pointed at the sandbox, then `configure`d)."""
    sb = Sandbox(work / "sandbox")
    sb.start()
    proxy = None
    try:
        sb.primary.sql(*setup_sql)
        sb.wait_replicas()
        port = free_port()
        cfg = yaml.safe_load((ROOT / "conf" / "proxy.yaml").read_text())
        cfg.update(listen=f"127.0.0.1:{port}",
                   admin={"listen": f"127.0.0.1:{free_port()}",
                          "users": [{"name": "admin", "password": "compat-admin"}]},
                   metrics={"listen": f"127.0.0.1:{free_port()}"})
        cfg["backends"].update(primary=f"127.0.0.1:{sb.primary_port}",
                               replicas=[f"127.0.0.1:{p}" for p in sb.replica_ports])
        tls = sb.base / "tls"  # the sandbox's CA (drivers take TLS when offered)
        cfg["tls"] = {"cert": str(tls / "server.pem"), "key": str(tls / "server.key"),
                      "ca": str(tls / "ca.pem")}
        configure(cfg)
        conf = work / "proxy.yaml"
        conf.write_text(yaml.safe_dump(cfg))
        proxy = subprocess.Popen([sys.executable, "-m", "proxy.cli", "--config", str(conf)],
                                 cwd=ROOT, stdout=open(work / "proxy.out", "wb"),
                                 stderr=subprocess.STDOUT)
        time.sleep(3)
        yield sb, port
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(20)
        sb.destroy()


def copy_suite(argv: list[str], marker: str, name: str, part: str = "") -> tuple[Path, Path] | None:
    """A peer's checkout (argv[0], which must hold `marker`) copied to a new work directory,
    its `part` only or all of it but .git: (work, the copy); None if argv names none."""
    if not argv or not (Path(argv[0]) / marker).exists():
        return None
    work = Path(tempfile.mkdtemp(prefix=f"compat-{name}-"))
    src = work / name
    if part:
        shutil.copytree(Path(argv[0]) / part, src / part)
    else:
        shutil.copytree(argv[0], src, ignore=shutil.ignore_patterns(".git"))
    return work, src


Verdicts = tuple[int, int, str]  # passed, failed or errored, the FAILED/ERROR lines


def run_pytest(cwd: Path, tests: str, env: dict[str, str], log: Path,
               extra: list[str]) -> Verdicts:
    """pytest on a peer's tests: (passed, failed or errored, the FAILED/ERROR lines)."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         "--timeout=120", tests, *extra],
        cwd=cwd, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env},
    )
    text = out.stdout + out.stderr
    log.write_text(text)
    passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", text)) else 0
    failed = sum(int(n) for n in re.findall(r"(\d+) (?:failed|error)", text))
    fails = "\n".join(line for line in text.splitlines() if line.startswith(("FAILED", "ERROR")))
    return passed, failed, fails


# For suites that create accounts and log in as them: the proxy reads the accounts from MariaDB.
MONITOR_SQL = ["CREATE USER IF NOT EXISTS 'monitor'@'%' IDENTIFIED BY 'compat-monitor'",
               "GRANT ALL ON *.* TO 'monitor'@'%'"]


def backend_accounts(cfg: dict[str, Any]) -> None:
    """`auth: backend` with the account MONITOR_SQL creates."""
    cfg["users"] = []
    cfg["auth"] = {"mode": "backend", "user": "monitor", "password": "compat-monitor",
                   "refresh_s": 5}


def compare(work: Path, setup_sql: list[str], configure: Callable[[dict[str, Any]], None],
            run: Callable[[int, Path], Verdicts]) -> int:
    """`run(port, log)` once against MariaDB and once through the proxy (`sandbox_and_proxy`),
    then `report`."""
    with sandbox_and_proxy(work, setup_sql, configure) as (sb, port):
        d = run(sb.primary_port, work / "direct.log")
        p = run(port, work / "proxy.log")
    report(work, d, p)
    return 0


def report(work: Path, d: Verdicts, p: Verdicts) -> None:
    only = sorted(set(p[2].splitlines()) - set(d[2].splitlines()))
    print(f"work dir: {work} (direct.log, proxy.log, proxy.out)")
    if only:
        print("failing only through the proxy:\n  " + "\n  ".join(only))
    print(f"direct: {d[0]} passed, {d[1]} failed")
    print(f"proxy: {p[0]} passed, {p[1]} failed")
