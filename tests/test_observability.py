"""Metrics scraped by a real Prometheus, promtool checks, operator files against live metrics."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.core import config as C
from proxy.tools.sandbox import Sandbox, free_port

from .conftest import ROOT, ProxyProc, wait_port

DEPLOY = ROOT / "deploy"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def load(proxy: ProxyProc, seconds: float, sandbox: Sandbox) -> None:
    sandbox.primary.sql("CREATE TABLE IF NOT EXISTS shop.inventory (sku_id INT PRIMARY KEY, quantity INT NOT NULL)",
                        "INSERT IGNORE INTO shop.inventory VALUES (900, 1000000)")
    c = proxy.connect()
    end = time.monotonic() + seconds
    with c.cursor() as cur:
        while time.monotonic() < end:
            cur.execute("SELECT 1")
            cur.execute("UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = 900 AND quantity > 0")
            try:
                cur.execute("SELECT * FROM no_such_table_obs")
            except Exception:  # noqa: BLE001 - errors are part of the load
                pass
            time.sleep(0.005)
    c.close()


def test_health_endpoints(proxy: ProxyProc) -> None:
    base = f"http://127.0.0.1:{proxy.metrics_port}"
    assert get(base + "/healthz") == (200, "ok\n")
    assert get(base + "/readyz")[0] == 200
    assert get(base + "/nope")[0] == 404


def test_promtool_checks_live_metrics_and_rules(proxy: ProxyProc, sandbox: Sandbox) -> None:
    load(proxy, 1, sandbox)
    _, text = get(f"http://127.0.0.1:{proxy.metrics_port}/metrics")
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("seckill_proxy_statements_total", "seckill_proxy_statement_duration_seconds_bucket",
                 "seckill_proxy_hotrow_statements_total", "seckill_proxy_hotrow_batch_size_bucket",
                 "seckill_proxy_backend_up", "seckill_proxy_replica_lag_seconds",
                 "seckill_proxy_primary_durable", "seckill_proxy_client_connections",
                 "seckill_proxy_build_info"):
        assert re.search(rf"^{name}[{{ ]", text, re.M), name
    # Label values are bounded: no SQL text or key values in any label.
    assert "no_such_table" not in text and "sku_id" not in text
    r = subprocess.run(["promtool", "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=DEPLOY / "prometheus",
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_real_prometheus_scrapes_moving_series(proxy: ProxyProc, sandbox: Sandbox, tmp_path: Path) -> None:
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    cfg["global"]["scrape_interval"] = "1s"
    cfg["global"]["evaluation_interval"] = "1s"
    cfg["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yml")]
    cfg["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{proxy.metrics_port}"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 30)
        th = threading.Thread(target=load, args=(proxy, 8, sandbox))
        th.start()
        th.join()

        def query(q: str) -> list[Any]:
            _, body = get(f"http://127.0.0.1:{port}/api/v1/query?query=" + urllib.parse.quote(q))
            return json.loads(body)["data"]["result"]  # type: ignore[no-any-return]

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not query("rate(seckill_proxy_statements_total[5s]) > 0"):
            time.sleep(1)
        moving = query("rate(seckill_proxy_statements_total[10s]) > 0")
        assert moving, "no statement series moving in Prometheus"
        routes = {r["metric"]["route"] for r in moving}
        assert {"replica", "hotrow-merge"} <= routes
        assert query('up{job="seckill-proxy"} == 1')
        assert query("seckill_proxy_hotrow_batch_size_count > 0")
        assert query('seckill_proxy_statements_total{outcome="error"} > 0')
        assert query("seckill_proxy_primary_durable == 1")
        _, rules = get(f"http://127.0.0.1:{port}/api/v1/rules")
        assert len(json.loads(rules)["data"]["groups"][0]["rules"]) == 7
    finally:
        prom.terminate()
        prom.wait(10)


def test_grafana_dashboard_and_alerts_use_only_exported_metrics(proxy: ProxyProc,
                                                                 sandbox: Sandbox) -> None:
    load(proxy, 0.5, sandbox)
    _, text = get(f"http://127.0.0.1:{proxy.metrics_port}/metrics")
    exported = set(re.findall(r"^# TYPE (\S+) (\w+)", text, re.M))
    names = set()
    for name, kind in exported:
        names.add(name)
        if kind == "histogram":
            names |= {name + "_bucket", name + "_sum", name + "_count"}
        if kind == "counter" and not name.endswith("_total"):
            names.add(name + "_total")
    names.add("up")
    dash = json.loads((DEPLOY / "grafana" / "seckill-proxy-dashboard.json").read_text())
    used = {m for p in dash["panels"] for t in p["targets"]
            for m in re.findall(r"\b(seckill_proxy_\w+)", t["expr"])}
    assert len(used) >= 12
    assert used <= names, used - names
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    in_alerts = {m for g in alerts["groups"] for r in g["rules"]
                 for m in re.findall(r"\b(seckill_proxy_\w+)", r["expr"])}
    assert len(in_alerts) >= 5
    assert in_alerts <= names, in_alerts - names


def test_compose_file_structure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compose file is valid against the compose specification (check-jsonschema's vendored
    schema), mounts only files that exist, keeps the admin port unpublished, provisions
    Grafana, sizes the proxy's pools under the servers' max_connections, and its proxy config
    validates."""
    compose = DEPLOY / "compose" / "docker-compose.yml"
    r = subprocess.run([str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema",
                        "vendor.compose-spec", str(compose)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = yaml.safe_load(compose.read_text())
    svc = doc["services"]
    assert set(svc) == {"mysql-primary", "mysql-replica", "proxy", "prometheus", "grafana"}
    for name in ("mysql-primary", "mysql-replica"):
        assert svc[name]["image"] == "mysql:8.4" and "--gtid-mode=ON" in svc[name]["command"]
        assert "--super-read-only=ON" not in svc[name]["command"]  # the image's init refuses it
    for s in svc.values():
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            assert (DEPLOY / "compose" / src).resolve().exists(), src
    assert any("provisioning/datasources" in v for v in svc["grafana"]["volumes"])
    assert any("provisioning/dashboards" in v for v in svc["grafana"]["volumes"])
    assert (DEPLOY / "Dockerfile").exists()
    assert not any(p.startswith("6032") for p in svc["proxy"]["ports"])  # admin not published
    max_conn = int(next(a for a in svc["mysql-primary"]["command"]
                        if a.startswith("--max-connections=")).split("=")[1])
    proxy_cfg = yaml.safe_load((DEPLOY / "compose" / "proxy.yaml").read_text())
    monkeypatch.setenv("APP_PASSWORD", "x")
    monkeypatch.setenv("ADMIN_PASSWORD", "y")
    cfg = C.validate(proxy_cfg)
    assert cfg.backends.pool.max_connections + 16 < max_conn  # pool + the proxy's own connections
    assert "CREATE TABLE shop.inventory" in (DEPLOY / "compose" / "primary.sql").read_text()


def test_k8s_manifests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Valid against Kubernetes' own schemas (kubernetes-validate, strict: no unknown field);
    the probes wait longer than /readyz may take, a preStop delay, a Secret, a non-root
    read-only container, a PodDisruptionBudget."""
    path = DEPLOY / "k8s" / "seckill-proxy.yaml"
    r = subprocess.run([str(Path(sys.executable).parent / "kubernetes-validate"), "--strict",
                        str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("passed for resource") == 5, r.stdout  # all but the ServiceMonitor CRD
    docs = list(yaml.safe_load_all(path.read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Secret", "ConfigMap", "Deployment", "PodDisruptionBudget", "Service",
                          "ServiceMonitor"}
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["readinessProbe"]["timeoutSeconds"] > 4  # /readyz may take 4 s
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
    assert kinds["Deployment"]["spec"]["replicas"] > 1
    monkeypatch.setenv("APP_PASSWORD", "x")
    monkeypatch.setenv("ADMIN_PASSWORD", "y")
    cfg = C.validate(yaml.safe_load(kinds["ConfigMap"]["data"]["proxy.yaml"]))
    prestop = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert prestop + cfg.limits.shutdown_grace_s <= pod["terminationGracePeriodSeconds"]


def test_query_digest_and_log_lines(proxy: ProxyProc) -> None:
    proxy.admin("RESET QUERY DIGEST")
    c = proxy.connect()
    with c.cursor() as cur:
        for i in range(5):
            cur.execute(f"SELECT {i} + 1 AS digest_probe")
    c.close()
    rows = proxy.admin("SHOW QUERY DIGEST 100")
    probe = [r for r in rows if "digest_probe" in r[0]]
    assert probe and probe[0][0] == "SELECT ? + ? AS digest_probe" and probe[0][1] == 5
    assert probe[0][5] == 5  # rows returned
    proxy.admin("RESET QUERY DIGEST")
    assert not [r for r in proxy.admin("SHOW QUERY DIGEST") if "digest_probe" in r[0]]
    time.sleep(0.2)
    lines = [json.loads(ln) for ln in proxy.log().splitlines() if ln.startswith("{")]
    disc = [ln for ln in lines if "disconnected" in ln["msg"]]
    assert disc and all("conn_id" in ln for ln in disc)
    # fields as fields: the event and its bounded reason, beside the text
    assert all(ln["event"] == "disconnect" and ln["reason"] for ln in disc)
    assert any(ln["msg"].endswith(": client quit") for ln in disc)


def test_slow_statement_log_and_log_level(proxy: ProxyProc) -> None:
    c = proxy.connect()
    with c.cursor() as cur:
        cur.execute("SELECT SLEEP(1.05) AS slow_probe")
    c.close()
    time.sleep(0.2)
    slow = [json.loads(ln) for ln in proxy.log().splitlines()
            if ln.startswith("{") and "slow statement" in ln]
    assert slow and "SLEEP(?) AS slow_probe" in slow[-1]["msg"] and "conn_id" in slow[-1]
    assert slow[-1]["event"] == "slow_statement" and slow[-1]["duration_ms"] >= 1000
    assert slow[-1]["digest"].endswith("AS slow_probe") and slow[-1]["outcome"] == "ok"
    proxy.admin("SET log_level = 'debug'")
    proxy.admin("SET log_level = 'info'")
    with pytest.raises(Exception, match="log_level"):
        proxy.admin("SET log_level = 'loud'")


def test_backend_resets_are_counted_by_reason(proxy: ProxyProc) -> None:
    """A connection given back with a session's state on it (a user variable: pinned) or with
    a transaction open is reset before reuse, counted under why."""
    series = r'seckill_proxy_backend_resets_total\{backend="[^"]+",reason="%s"\}'
    before = {r: proxy.metric(series % r) for r in ("session_state", "transaction")}
    c = proxy.connect()
    c.cursor().execute("SET @x = 1")  # pins the session
    c.close()
    c = proxy.connect()
    c.cursor().execute("START TRANSACTION")
    c.cursor().execute("SELECT 1")  # a transaction open when the client leaves
    c.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(
            proxy.metric(series % r) > before[r] for r in before):
        time.sleep(0.1)
    assert all(proxy.metric(series % r) > before[r] for r in before), proxy.scrape()


_FLUSH_ONE = """
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from proxy.core import metrics as M
M.STATEMENT_STATS.observe("SELECT", "primary", "ok", 0.001, 1)  # one statement, on the fast lane
M.LEASE_TRANSITIONS.inc("soft", "statement_done")
M.DEFERRED_BEGINS.inc()
M.flush()
r = CollectorRegistry()
multiprocess.MultiProcessCollector(r)
print(generate_latest(r).decode())
"""


def test_a_worker_s_flush_writes_every_counter_once_the_fast_lane_ran(tmp_path: Path) -> None:
    """With workers, the plain-number collectors reach the multiprocess files at each flush:
    also the unlabelled fast-lane counter (prometheus-client's `labels()` refused it, the
    flush stopped there, and the latency histogram and later counters never reached a scrape)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", _FLUSH_ONE], env=env, capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    lines = set(r.stdout.splitlines())
    assert "seckill_proxy_fastlane_statements_total 1.0" in lines
    assert "seckill_proxy_deferred_begins_total 1.0" in lines
    assert 'seckill_proxy_statement_duration_seconds_count{route="primary"} 1.0' in lines
    assert ('seckill_proxy_lease_transitions_total{reason="statement_done",to="soft"} 1.0'
            in lines)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_log_line_whose_traceback_cannot_be_formatted_is_still_written(fmt: str) -> None:
    """The event loop logs a task's exception with its traceback; an exception object that
    breaks the traceback module (seen: a freed one a mypyc re-raise handed the loop,
    core/aio.py) once raised out of the loop's exception handler and stopped the proxy. The
    formatters write the line anyway, saying the traceback was not formatted."""
    import logging

    from proxy.cli import JsonFormatter, TextFormatter

    class Broken(logging.Formatter):
        def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
            raise TypeError("issubclass() arg 1 must be a class")

    class J(JsonFormatter, Broken): ...

    class T(TextFormatter, Broken): ...

    f = J() if fmt == "json" else T()
    try:
        raise ValueError("x")
    except ValueError:
        rec = logging.LogRecord("asyncio", logging.ERROR, "", 0, "Task exception was never "
                                "retrieved", None, sys.exc_info())
    line = f.format(rec)
    assert "Task exception was never retrieved" in line
    assert "traceback not formatted: TypeError" in line
    if fmt == "json":
        assert json.loads(line)["level"] == "error"
