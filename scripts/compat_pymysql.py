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
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.sandbox import Sandbox, free_port  # noqa: E402


def _databases(port: int) -> list[dict[str, object]]:
    return [
        {"host": "127.0.0.1", "port": port, "user": "app", "password": "app",
         "database": "test1", "use_unicode": True, "local_infile": True},
        {"host": "127.0.0.1", "port": port, "user": "test2", "password": "some password",
         "database": "test2"},
    ]


def _run(src: Path, port: int, label: str, extra: list[str]) -> tuple[int, int, str]:
    (src / "pymysql" / "tests" / "databases.json").write_text(json.dumps(_databases(port)))
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         "--timeout=120", "pymysql/tests", *extra],
        cwd=src, capture_output=True, text=True, env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
    )
    text = out.stdout + out.stderr
    (src.parent / f"{label}.log").write_text(text)
    passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", text)) else 0
    failed = sum(int(n) for n in re.findall(r"(\d+) (?:failed|error)", text))
    fails = "\n".join(line for line in text.splitlines() if line.startswith(("FAILED", "ERROR")))
    return passed, failed, fails


def main(argv: list[str]) -> int:
    if not argv or not (Path(argv[0]) / "pymysql" / "tests").is_dir():
        print(__doc__)
        return 2
    work = Path(tempfile.mkdtemp(prefix="compat-pymysql-"))
    src = work / "PyMySQL"
    shutil.copytree(argv[0], src, ignore=shutil.ignore_patterns(".git"))
    sb = Sandbox(work / "sandbox")
    sb.start()
    proxy = None
    try:
        sb.primary.sql(
            "CREATE DATABASE IF NOT EXISTS test1 DEFAULT CHARACTER SET utf8mb4",
            "CREATE DATABASE IF NOT EXISTS test2 DEFAULT CHARACTER SET utf8mb4",
            "CREATE USER IF NOT EXISTS test2 IDENTIFIED BY 'some password'",
            "GRANT ALL ON test2.* TO test2",
            "SET GLOBAL local_infile = 1",
        )
        sb.wait_replicas()
        port = free_port()
        cfg = yaml.safe_load((ROOT / "conf" / "proxy.yaml").read_text())
        cfg.update(listen=f"127.0.0.1:{port}",
                   admin={"listen": f"127.0.0.1:{free_port()}",
                          "users": [{"name": "admin", "password": "compat-admin"}]},
                   metrics={"listen": f"127.0.0.1:{free_port()}"},
                   users=[{"name": "app", "password": "app"},
                          {"name": "test2", "password": "some password"}])
        cfg["backends"].update(primary=f"127.0.0.1:{sb.primary_port}",
                               replicas=[f"127.0.0.1:{p}" for p in sb.replica_ports])
        tls = sb.base / "tls"  # the sandbox's CA (PyMySQL takes TLS when offered)
        cfg["tls"] = {"cert": str(tls / "server.pem"), "key": str(tls / "server.key"),
                      "ca": str(tls / "ca.pem")}
        conf = work / "proxy.yaml"
        conf.write_text(yaml.safe_dump(cfg))
        proxy = subprocess.Popen([sys.executable, "-m", "proxy.cli", "--config", str(conf)],
                                 cwd=ROOT, stdout=open(work / "proxy.out", "wb"),
                                 stderr=subprocess.STDOUT)
        time.sleep(3)
        d = _run(src, sb.primary_port, "direct", argv[1:])
        p = _run(src, port, "proxy", argv[1:])
        only = sorted(set(p[2].splitlines()) - set(d[2].splitlines()))
        print(f"work dir: {work} (direct.log, proxy.log, proxy.out)")
        if only:
            print("failing only through the proxy:\n  " + "\n  ".join(only))
        print(f"direct: {d[0]} passed, {d[1]} failed")
        print(f"proxy: {p[0]} passed, {p[1]} failed")
        return 0
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(20)
        sb.destroy()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
