"""Every metric the proxy exports, declared in one place (names, types, help, labels).

Label values are bounded by construction: backend addresses from config, fixed reason/kind
strings from the code. Never SQL text, key values or anything a client typed.

With `workers: N > 1` each worker runs with prometheus-client's multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, set by the supervisor, workers.py): metrics live in files the
supervisor's /metrics adds up. Each gauge says how workers' values combine (`multiprocess_mode`:
sums for what each worker holds, the most recent for what every worker's monitor sees alike).
The plain-number collectors below (per-statement counters) are pushed into those files by
`flush()`, which the supervisor asks of every worker before it renders a scrape.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any, Final, Literal

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

_log: Final = logging.getLogger("seckill.metrics")

# A `_created` series per counter child doubles the series count and no dashboard uses it.
disable_created_metrics()

P: Final = "seckill_proxy_"
# set by the supervisor for its workers (workers.py), before prometheus-client is imported
MULTIPROC_DIR: Final = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
# how workers' values of a gauge combine
SUM: Literal["livesum"] = "livesum"
RECENT: Literal["livemostrecent"] = "livemostrecent"
_LAT: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

# Resolved label children of counters incremented on every statement: `labels()` takes a lock
# and a lookup each call. Bounded like the label values themselves.
_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, resolved once; an unlabelled metric is its own child
    (prometheus-client's `labels()` refuses one)."""
    key = (id(metric), labels)
    ch = _CHILDREN.get(key)
    if ch is None:
        ch = _CHILDREN[key] = metric.labels(*labels) if labels else metric
    return ch


BUILD: Final = Gauge(P + "build_info", "Build information of the running proxy", ["version"],
              multiprocess_mode="livemax")
CONFIG_RELOADS: Final = Counter(P + "config_reloads_total", "Config reloads by outcome", ["outcome"])

CLIENT_CONNECTIONS: Final = Gauge(P + "client_connections", "Client connections currently open",
                           multiprocess_mode=SUM)
CLIENT_ACCEPTED: Final = Counter(P + "client_connections_accepted_total", "Client connections accepted")
CLIENT_REJECTED: Final = Counter(
    P + "client_connections_rejected_total", "Client connections rejected, by reason", ["reason"]
)
SHA2_LOGINS: Final = Counter(
    P + "caching_sha2_logins_total",
    "caching_sha2_password logins by path (fast, full_tls, full_rsa) and outcome (ok, denied)",
    ["path", "outcome"],
)
LOGIN_FAILURES: Final = Counter(
    P + "login_failures_total", "Failed logins, by port (client, admin)", ["port"]
)
LOGIN_BLOCKS: Final = Counter(
    P + "login_blocks_total",
    "Users or client addresses blocked after too many failed logins, by port and kind",
    ["port", "kind"],
)
CLIENT_DISCONNECTS: Final = Counter(
    P + "client_disconnects_total", "Client disconnects, by reason", ["reason"]
)

STATEMENTS_NAME: Final = P + "statements_total"
STATEMENTS_HELP: Final = "Statements handled, by kind, route and outcome"
FASTLANE_NAME: Final = P + "fastlane_statements_total"
FASTLANE_HELP: Final = "Statements (of statements_total) run by the fast lane, without waking a session task"
STATEMENT_LATENCY_NAME: Final = P + "statement_duration_seconds"
STATEMENT_LATENCY_HELP: Final = "Statement latency seen by the proxy, by route"

POOL_IN_USE: Final = Gauge(P + "backend_pool_in_use", "Backend connections lent out", ["backend"],
                    multiprocess_mode=SUM)
POOL_IDLE: Final = Gauge(P + "backend_pool_idle", "Idle backend connections", ["backend"],
                  multiprocess_mode=SUM)
POOL_WAIT: Final = Histogram(
    P + "backend_pool_wait_seconds", "Time to get a backend connection", ["backend"], buckets=_LAT
)
POOL_EXHAUSTED: Final = Counter(
    P + "backend_pool_exhausted_total", "Acquires that timed out on a full pool", ["backend"]
)
BACKEND_CONNECTS: Final = Counter(
    P + "backend_connects_total", "Backend connections opened", ["backend"]
)
BACKEND_CONNECT_ERRORS: Final = Counter(
    P + "backend_connect_errors_total", "Failed backend connection attempts", ["backend"]
)
BACKEND_RESETS: Final = Counter(
    P + "backend_resets_total", "Backend connections reset before reuse, by reason",
    ["backend", "reason"]
)
BACKEND_DISCONNECTS: Final = Counter(
    P + "backend_disconnects_total", "Backend connections closed, by reason", ["backend", "reason"]
)


class _Files:
    """Multi-worker: a counter's totals pushed into prometheus-client's multiprocess files as
    deltas since the last push (the collectors here keep plain totals)."""

    def __init__(self, make: Any) -> None:
        self.make = make
        self.metric: Any = None
        self.pushed: dict[tuple[tuple[str, ...], int], float] = {}

    def add(self, labels: tuple[str, ...], total: float, slot: int = -1) -> None:
        """`total` so far of the series `labels` (of a histogram's bucket `slot`, or its sum
        at -2)."""
        if self.metric is None:
            self.metric = self.make()
        d = total - self.pushed.get((labels, slot), 0)
        ch = child(self.metric, *labels)  # (creates the series at 0, as a scrape shows it)
        if d:
            (ch if slot == -1 else ch._sum if slot == -2 else ch._buckets[slot]).inc(d)
            self.pushed[(labels, slot)] = total


_FLUSHED: list[Any] = []  # collectors with a flush()
_LIVE: dict[int, tuple[Any, Any]] = {}  # gauges read when scraped: (child, function)


def live(gauge: Any, fn: Any) -> None:
    """A gauge whose value is `fn()` when scraped (prometheus-client's set_function; with
    workers, set at each flush, as the multiprocess files cannot call it)."""
    if MULTIPROC_DIR is None:
        gauge.set_function(fn)
    else:
        _LIVE[id(gauge)] = (gauge, fn)  # (a pool rebuilt on reload replaces its own)


def flush() -> None:
    """Push every plain-number collector's counts into the multiprocess files (a worker's
    part of the next scrape); nothing to do with one process. One collector's fault is logged
    and skips only that collector: the others, and the caller (housekeeping, which also reaps
    the pools), go on."""
    if MULTIPROC_DIR is not None:
        for c in _FLUSHED:
            try:
                c.flush()
            except Exception:
                _log.exception("metrics flush failed for %s", type(c).__name__)
        for g, fn in list(_LIVE.values()):
            g.set(fn())


class LabelCounter(Collector):
    """A labelled counter kept as plain integers and turned into a family at scrape time, for
    counters bumped on every statement (a prometheus-client child takes a lock per `inc`).
    Label values must be bounded, as everywhere here; an Enum member counts as its value."""

    def __init__(self, name: str, help: str, labels: list[str]) -> None:
        self.name, self.help, self.labels = name, help, labels
        # an unlabelled one shows its one series from the start, as a prometheus Counter does
        self.counts: dict[tuple[Any, ...], int] = {} if labels else {(): 0}
        self._files = _Files(lambda: Counter(name, help, labels, registry=None))
        REGISTRY.register(self)
        _FLUSHED.append(self)

    def inc(self, *labels: Any) -> None:
        self.counts[labels] = self.counts.get(labels, 0) + 1

    def add(self, n: int, *labels: Any) -> None:
        self.counts[labels] = self.counts.get(labels, 0) + n

    def _merged(self) -> dict[tuple[str, ...], int]:
        merged: dict[tuple[str, ...], int] = {}
        for labels, n in list(self.counts.items()):
            key = tuple(str(getattr(x, "value", x)) for x in labels)
            merged[key] = merged.get(key, 0) + n
        return merged

    def flush(self) -> None:
        for key, n in self._merged().items():
            self._files.add(key, n)

    def collect(self) -> Iterator[Metric]:
        merged = self._merged()
        c = CounterMetricFamily(self.name, self.help, labels=self.labels)
        for key, n in merged.items():
            c.add_metric(list(key), n)
        yield c


class _Hist:
    """One histogram series as native numbers: per-bucket counts (then +Inf) and the sum. An
    observation allocates no float (a list of floats did, twice per statement)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        self.les = [*map(str, buckets), "+Inf"]  # (the bucket labels as they were written)
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def add(self, value: float) -> None:
        i = 0
        for b in self.bounds:  # (most values fall in the first few buckets)
            if value <= b:
                break
            i += 1
        self.counts[i] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        acc = 0
        out = []
        for le, cnt in zip(self.les, self.counts, strict=True):
            acc += cnt
            out.append((le, float(acc)))
        return out

    def push(self, files: _Files, labels: tuple[str, ...]) -> None:
        for i, cnt in enumerate(self.counts):  # each bucket's own count, then the sum
            files.add(labels, cnt, i)
        files.add(labels, self.sum, -2)


class PlainHistogram(Collector):
    """An unlabelled histogram kept as plain numbers, for one observed per merged batch:
    prometheus-client's `observe` is interpreted and takes a lock."""

    def __init__(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help = name, help
        self.h = _Hist(buckets)
        self.observe = self.h.add
        self._files = _Files(lambda: Histogram(name, help, buckets=buckets, registry=None))
        REGISTRY.register(self)
        _FLUSHED.append(self)

    def flush(self) -> None:
        self.h.push(self._files, ())

    def collect(self) -> Iterator[Metric]:
        hf = HistogramMetricFamily(self.name, self.help)
        hf.add_metric([], self.h.cumulative(), self.h.sum)
        yield hf


DEFERRED_BEGINS: Final = LabelCounter(  # (one per seed order: no lock per inc)
    P + "deferred_begins_total",
    "Plain BEGINs answered by the proxy and sent with the transaction's first statement", [],
)
LEASE_TRANSITIONS: Final = LabelCounter(
    P + "lease_transitions_total", "Changes of sessions' hold on backend connections (lease.py)",
    ["to", "reason"],
)
BACKEND_UP: Final = Gauge(P + "backend_up", "1 if the backend answered its last check", ["backend", "role"],
                   multiprocess_mode=RECENT)
REPLICA_LAG: Final = Gauge(P + "replica_lag_seconds", "Seconds_Behind_Master of each replica", ["backend"],
                    multiprocess_mode=RECENT)
BACKEND_GTID_SEQ: Final = Gauge(
    P + "backend_gtid_sequence", "Highest GTID sequence number per replication domain",
    ["backend", "domain"], multiprocess_mode="livemax",
)
PRIMARY_SETTING: Final = Gauge(
    P + "primary_durability_setting", "Durability-relevant settings of the primary", ["setting"],
    multiprocess_mode=RECENT,
)
PRIMARY_DURABLE: Final = Gauge(
    P + "primary_durable",
    "1 if innodb_flush_log_at_trx_commit=1, sync_binlog=1 and the binlog is on, else 0",
    multiprocess_mode=RECENT,
)

READS: Final = LabelCounter(
    P + "reads_total",
    "Replica-eligible reads by consistency level and outcome (replica, replica_waited, "
    "primary_fallback)", ["consistency", "outcome"],
)

DURABILITY_REFUSED: Final = Counter(
    P + "durability_refused_writes_total", "Writes refused because the primary is not durable (strict)"
)
DURABILITY_UNSAFE_WRITES: Final = Counter(
    P + "durability_unsafe_writes_total", "Writes sent to a primary that is not durable (warn)"
)
ACKS: Final = Counter(
    P + "replica_acks_total", "Write acknowledgements under ack: replica, by outcome "
    "(replica, degraded, error)", ["outcome"],
)
ACK_WAIT: Final = Histogram(
    P + "replica_ack_wait_seconds", "Time a write's OK was held for replica confirmation",
    buckets=_LAT,
)
COMMIT_IN_DOUBT: Final = Counter(
    P + "commit_in_doubt_total", "Tracked COMMITs interrupted by a lost connection, by resolution",
    ["resolution"],
)
SPLIT_BRAIN: Final = Gauge(P + "split_brain", "1 while more than one backend is writable (writes stopped)",
                    multiprocess_mode=RECENT)
FAILOVERS: Final = Counter(P + "failovers_total", "Times writes moved to a newly promoted primary")
PRIMARY_SEMI_SYNC: Final = Gauge(
    P + "primary_semi_sync", "Semi-synchronous replication on the primary", ["state"],
    multiprocess_mode=RECENT,
)

HOTROW_STATEMENTS: Final = LabelCounter(
    P + "hotrow_statements_total", "Hot-row statements by mode and outcome", ["mode", "outcome"]
)
HOTROW_STATEMENTS.counts.update({("merge", "succeeded"): 0, ("merge", "sold_out"): 0})
HOTROW_BATCH_SIZE: Final = PlainHistogram(
    P + "hotrow_batch_size", "Members per merged batch",
    (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
HOTROW_BATCH_COMMIT: Final = PlainHistogram(
    P + "hotrow_batch_commit_seconds", "Merged batch transaction latency (lock to COMMIT OK)",
    _LAT,
)
HOTROW_FIRST_TRY: Final = LabelCounter(
    P + "hotrow_batch_first_try_total",
    "Merged batches tried in one round trip, by outcome (held, or redone read-then-write)",
    ["outcome"],
)
HOTROW_RESERVATIONS: Final = LabelCounter(
    P + "hotrow_reservations_total",
    "Units reserved for merged members inside transactions, by how they ended: sold at the "
    "member's COMMIT, sold or returned to stock by a resolution", ["outcome"],
)
HOTROW_RESERVATIONS.counts.update({("sold_at_commit",): 0, ("sold",): 0, ("returned",): 0})
HOTROW_QUEUE_DEPTH: Final = Gauge(P + "hotrow_queue_depth", "Statements waiting in hot-row queues",
                           multiprocess_mode=SUM)
HOTROW_QUEUE_WAIT: Final = Histogram(
    P + "hotrow_queue_wait_seconds", "Time waiting for a hot-row queue slot", buckets=_LAT
)
HOTROW_IN_DOUBT: Final = Counter(
    P + "hotrow_batch_in_doubt_total", "Batches whose COMMIT was interrupted, by resolution",
    ["resolution"],
)


_VERBS: Final = frozenset({"select", "insert", "update", "delete", "replace", "begin", "start", "commit",
                    "rollback", "set", "use", "show", "call", "create", "drop", "alter"})


class _StatementStats(Collector):
    """Per-statement counter and latency histogram kept as plain numbers and turned into
    Prometheus families at scrape time: a locked prometheus-client child per observation cost
    about a tenth of the proxy's per-statement CPU."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}
        self.hist: dict[str, _Hist] = {}  # route -> its latency histogram
        self.lane = 0
        self._files = _Files(lambda: Counter(STATEMENTS_NAME, STATEMENTS_HELP,
                                             ["kind", "route", "outcome"], registry=None))
        self._lane_files = _Files(lambda: Counter(FASTLANE_NAME, FASTLANE_HELP, registry=None))
        self._hist_files = _Files(lambda: Histogram(
            STATEMENT_LATENCY_NAME, STATEMENT_LATENCY_HELP, ["route"], buckets=_LAT,
            registry=None))
        _FLUSHED.append(self)

    def observe(self, verb: str, route: str, outcome: str, seconds: float, lane: int = 0) -> None:
        """One statement; `lane` 1 if the fast lane ran it."""
        self.lane += lane
        key = (verb, route, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1
        h = self.hist.get(route)
        if h is None:
            h = self.hist[route] = _Hist(_LAT)
        h.add(seconds)

    def _merged(self) -> dict[tuple[str, str, str], int]:
        merged: dict[tuple[str, str, str], int] = {}
        for (verb, route, outcome), n in list(self.counts.items()):
            kind = verb.lower() if verb.lower() in _VERBS else "other"
            merged[(kind, route, outcome)] = merged.get((kind, route, outcome), 0) + n
        return merged

    def flush(self) -> None:
        for key, n in self._merged().items():
            self._files.add(key, n)
        if self.lane:
            self._lane_files.add((), self.lane)
        for route, h in list(self.hist.items()):
            h.push(self._hist_files, (route,))

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily(STATEMENTS_NAME, STATEMENTS_HELP,
                                labels=["kind", "route", "outcome"])
        for labels, n in self._merged().items():
            c.add_metric(list(labels), n)
        yield c
        hf = HistogramMetricFamily(STATEMENT_LATENCY_NAME, STATEMENT_LATENCY_HELP,
                                   labels=["route"])
        for route, h in list(self.hist.items()):
            hf.add_metric([route], h.cumulative(), h.sum)
        yield hf
        yield CounterMetricFamily(FASTLANE_NAME, FASTLANE_HELP, value=self.lane)


# `STATEMENT_STATS.observe(verb, route, outcome, seconds, lane=0)`: one call per statement (a
# Final of a compiled class: a direct call from compiled modules, no lookup by name)
STATEMENT_STATS: Final = _StatementStats()
REGISTRY.register(STATEMENT_STATS)


def _registry(multiproc_dir: str | None) -> Any:
    """The process's own registry, or with workers every worker's files added up."""
    if multiproc_dir is None:
        return REGISTRY
    from prometheus_client.multiprocess import MultiProcessCollector

    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=multiproc_dir)
    return reg


def render(multiproc_dir: str | None = MULTIPROC_DIR) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(_registry(multiproc_dir))


def samples(prefix: str = P) -> list[tuple[str, str, float]]:
    """Every current sample as (name, labels as `k=v,...`, value): what `SHOW METRICS` and
    `seckill-proxy top` read over the admin port (no HTTP scrape needed)."""
    out: list[tuple[str, str, float]] = []
    for fam in _registry(MULTIPROC_DIR).collect():
        for s in fam.samples:
            if not s.name.startswith(prefix) or s.name.endswith("_created"):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out.append((s.name, labels, float(s.value)))
    return out
