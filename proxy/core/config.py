"""Configuration: load YAML, expand ${ENV}, then validate into typed dataclasses.

Loading and validation are separate steps (as in uvicorn) so that `--check-config` and
`RELOAD CONFIG` run exactly the same checks as start-up, and every error names the key path
(`backends.replicas[1]: port must be 1..65535`). Unknown keys are errors: a typo such as
`max_conections` must not silently fall back to a default on flash-sale day.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from proxy.core.configenv import ConfigError, EnvStr, _expand_env, _from_env  # noqa: F401
from proxy.core.configmodel import (  # noqa: F401 - the model is read through this module
    CONSISTENCY,
    Address,
    AdminCfg,
    AuthCfg,
    BackendsCfg,
    BackendTLSCfg,
    Config,
    DurabilityCfg,
    HotRowCfg,
    HotRowRule,
    LimitsCfg,
    PoolCfg,
    RoutingCfg,
    TLSCfg,
    UserCfg,
)

HOTROW_MODES = ("off", "queue", "merge", "auto")


class _Node:
    """A mapping being validated: tracks which keys were read so leftovers become errors."""

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(path, "must be a mapping")
        self.data: dict[str, Any] = data
        self.path = path
        self.seen: set[str] = set()

    def key(self, k: str) -> str:
        return f"{self.path}.{k}" if self.path else k

    def get(self, k: str, default: Any = None, required: bool = False) -> Any:
        self.seen.add(k)
        if k not in self.data:
            if required:
                raise ConfigError(self.key(k), "is required")
            return default
        return self.data[k]

    def child(self, k: str) -> _Node:
        return _Node(self.get(k), self.key(k))

    def done(self) -> None:
        extra = sorted(set(map(str, self.data)) - self.seen)
        if extra:
            raise ConfigError(self.key(extra[0]), "unknown key")


def _int(v: Any, path: str, lo: int, hi: int, what: str = "value") -> int:
    v = _from_env(v, int)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(path, f"{what} must be an integer")
    if not lo <= v <= hi:
        raise ConfigError(path, f"{what} must be {lo}..{hi}")
    return v


def _num(v: Any, path: str, lo: float, hi: float) -> float:
    v = _from_env(v, float)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ConfigError(path, "must be a number")
    if not lo <= v <= hi:
        raise ConfigError(path, f"must be {lo}..{hi}")
    return float(v)


def _bool(v: Any, path: str) -> bool:
    v = _from_env(v, bool)
    if not isinstance(v, bool):
        raise ConfigError(path, "must be true or false")
    return v


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(path, "must be a non-empty string")
    return v


def parse_address(v: Any, path: str) -> Address:
    if isinstance(v, int):
        v = f"127.0.0.1:{v}"
    if not isinstance(v, str) or ":" not in v:
        raise ConfigError(path, "must be host:port")
    host, _, port = v.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
    except ValueError:
        raise ConfigError(path, "port must be 1..65535") from None
    if not 1 <= p <= 65535:
        raise ConfigError(path, "port must be 1..65535")
    return Address(host, p)


def parse_backend(v: Any, path: str) -> Address:
    """A backend is host:port, or `unix:/path/to/mysqld.sock` when the proxy runs on the
    database host (a unix socket costs the kernel less per packet than loopback TCP)."""
    if isinstance(v, str) and v.startswith("unix:"):
        sock = v[5:]
        if not sock.startswith("/"):
            raise ConfigError(path, "unix socket path must be absolute (unix:/path/mysqld.sock)")
        return Address("localhost", 0, sock)
    return parse_address(v, path)


AUTH_PLUGINS = ("mysql_native_password", "caching_sha2_password")


def _users(v: Any, path: str) -> tuple[UserCfg, ...]:
    if not isinstance(v, list) or not v:
        raise ConfigError(path, "must be a non-empty list of {name, password}")
    out = []
    names: set[str] = set()
    for i, u in enumerate(v):
        n = _Node(u, f"{path}[{i}]")
        name = _str(n.get("name", required=True), n.key("name"))
        pw = n.get("password", required=True)
        if not isinstance(pw, str):
            raise ConfigError(n.key("password"), "must be a string")
        req = _bool(n.get("require_tls", UserCfg.require_tls), n.key("require_tls"))
        plugin = _str(n.get("plugin", UserCfg.plugin), n.key("plugin"))
        if plugin not in AUTH_PLUGINS:
            raise ConfigError(n.key("plugin"), "must be one of " + ", ".join(AUTH_PLUGINS))
        n.done()
        if name in names:
            raise ConfigError(n.key("name"), f"duplicate user {name!r}")
        names.add(name)
        out.append(UserCfg(name, pw, req, plugin))
    return tuple(out)


def _hotrow(n: _Node) -> HotRowCfg:
    mode = n.get("mode", HotRowCfg.mode)
    if mode not in HOTROW_MODES:
        raise ConfigError(n.key("mode"), f"must be one of {', '.join(HOTROW_MODES)}")
    rules = []
    raw_rules = n.get("rules", []) or []
    if not isinstance(raw_rules, list):
        raise ConfigError(n.key("rules"), "must be a list")
    for i, r in enumerate(raw_rules):
        rn = _Node(r, f"{n.key('rules')}[{i}]")
        table = _str(rn.get("table", required=True), rn.key("table"))
        if table.count(".") != 1:
            raise ConfigError(rn.key("table"), "must be schema.table")
        schema, tbl = table.split(".")
        rules.append(
            HotRowRule(
                schema.strip("`"),  # table names are case-sensitive (lower_case_table_names=0)
                tbl.strip("`"),
                _str(rn.get("key", required=True), rn.key("key")).strip("`").lower(),
                _str(rn.get("column", required=True), rn.key("column")).strip("`").lower(),
            )
        )
        rn.done()
    m = n.child("merge")
    max_batch = _int(m.get("max_batch", HotRowCfg.max_batch), m.key("max_batch"), 1, 100000)
    max_wait = _int(m.get("max_wait_us", HotRowCfg.max_wait_us), m.key("max_wait_us"), 0, 10_000_000)
    m.done()
    q = n.child("queue")
    qc = _int(q.get("concurrency", HotRowCfg.queue_concurrency), q.key("concurrency"), 1, 1000)
    qm = _int(q.get("max_waiting", HotRowCfg.queue_max_waiting), q.key("max_waiting"), 1, 10_000_000)
    qt = _int(q.get("wait_timeout_ms", HotRowCfg.queue_wait_timeout_ms), q.key("wait_timeout_ms"), 1, 3_600_000)
    q.done()
    bs = _str(n.get("batch_schema", HotRowCfg.batch_schema), n.key("batch_schema"))
    prune = _int(n.get("prune_after_s", HotRowCfg.prune_after_s), n.key("prune_after_s"), 1, 10**8)
    recover = _int(n.get("recover_after_s", HotRowCfg.recover_after_s), n.key("recover_after_s"), 1, 10**6)
    discover = _bool(n.get("discover", HotRowCfg.discover), n.key("discover"))
    raw_ex = n.get("exclude", []) or []
    if not isinstance(raw_ex, list):
        raise ConfigError(n.key("exclude"), "must be a list of schema.table")
    exclude = []
    for i, e in enumerate(raw_ex):
        e = _str(e, f"{n.key('exclude')}[{i}]")
        if e.count(".") != 1:
            raise ConfigError(f"{n.key('exclude')}[{i}]", "must be schema.table or schema.*")
        exclude.append(e.replace("`", ""))
    n.done()
    return HotRowCfg(mode, tuple(rules), max_batch, max_wait, qc, qm, qt, bs, prune, recover,
                     discover, tuple(exclude))


_COMMON_PASSWORDS = frozenset({
    "admin", "administrator", "password", "passw0rd", "123456", "12345678", "123456789",
    "1234567890", "qwerty", "secret", "changeme", "root", "mysql", "proxy", "letmein",
    "welcome", "default", "admin123", "password123", "p@ssw0rd", "qwertyuiop",
})


def weak_password(user: str, password: str) -> str | None:
    """Why a password is too weak for an admin port others can reach (None: fine)."""
    if password.lower() in _COMMON_PASSWORDS:
        return "a default or common password"
    if password.lower() == user.lower():
        return "the password is the user name"
    if len(password) < 12:
        return "a password shorter than 12 characters"
    return None


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


# Addresses a config may leave out (the dataclasses' other defaults are the ones used below)
LISTEN, ADMIN_LISTEN, METRICS_LISTEN = "127.0.0.1:6033", "127.0.0.1:6032", "127.0.0.1:9104"


def validate(raw: Any, source: str = "") -> Config:
    """Turn a parsed YAML document into a Config, or raise ConfigError naming the key. One
    function per section; a key left out takes its dataclass's default (configmodel.py), so
    every default is stated once."""
    raw = _expand_env(raw, "")
    top = _Node(raw, "")
    listen = parse_address(top.get("listen", LISTEN), "listen")
    admin = _admin(top.child("admin"))
    mn = top.child("metrics")
    m_listen = mn.get("listen", METRICS_LISTEN)
    metrics_listen = None if m_listen in (None, False) else parse_address(m_listen, mn.key("listen"))
    mn.done()
    auth = _auth(top.child("auth"))
    if auth.mode == "backend":
        # the monitor account is the proxy's own identity (first user); `users:` optional
        extra = top.get("users", []) or []
        users = (UserCfg(auth.user, auth.password),) + (
            _users(extra, "users") if extra else ())
    else:
        users = _users(top.get("users", required=True), "users")
    backends = _backends(top.child("backends"))
    routing = _routing(top.child("routing"))
    durability = _durability(top.child("durability"), len(backends.replicas))
    hotrow = _hotrow(top.child("hotrow"))
    limits = _limits(top.child("limits"))
    tls = _tls(top.child("tls")) if top.get("tls") is not None else None
    level = str(top.get("log_level", Config.log_level)).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("log_level", "must be DEBUG, INFO, WARNING or ERROR")
    slow = _int(top.get("slow_query_ms", Config.slow_query_ms), "slow_query_ms", 0, 86_400_000)
    log_format = str(top.get("log_format", Config.log_format)).lower()
    if log_format not in ("auto", "text", "json"):
        raise ConfigError("log_format", "must be text, json or auto")
    workers = _workers(top.get("workers", "auto"))
    top.done()
    return Config(listen, admin, metrics_listen, users, backends, hotrow, limits, routing,
                  durability, level, slow, source, tls, auth, log_format, workers)


def _workers(v: Any) -> int:
    """`workers: auto` (the host's cores, the default) or a number of processes."""
    if isinstance(v, str) and v.lower() == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)
    return _int(v, "workers", 1, 256)


def _choice(n: _Node, key: str, default: str, allowed: tuple[str, ...]) -> str:
    v = n.get(key, default)
    if v not in allowed:
        raise ConfigError(n.key(key), f"must be one of {', '.join(allowed)}")
    return str(v)


def _admin(an: _Node) -> AdminCfg:
    admin = AdminCfg(
        parse_address(an.get("listen", ADMIN_LISTEN), an.key("listen")),
        # no built-in account: whoever runs the proxy says who may steer it
        _users(an.get("users", required=True), an.key("users")),
        _int(an.get("max_connections", AdminCfg.max_connections), an.key("max_connections"),
             1, 10_000),
    )
    if not _loopback(admin.listen.host):
        for i, u in enumerate(admin.users):
            why = weak_password(u.name, u.password)
            if why:
                raise ConfigError(
                    f"{an.key('users')}[{i}].password",
                    f"{why}: refused on a non-loopback admin address ({admin.listen.host}); "
                    "use at least 12 characters, or listen on 127.0.0.1")
    an.done()
    return admin


def _auth(n: _Node) -> AuthCfg:
    a_user, a_pw = n.get("user"), n.get("password")
    auth = AuthCfg(_str(n.get("mode", AuthCfg.mode), n.key("mode")),
                   "" if a_user is None else _str(a_user, n.key("user")),
                   "" if a_pw is None else str(a_pw),
                   _num(n.get("refresh_s", AuthCfg.refresh_s), n.key("refresh_s"), 0.5, 86400))
    n.done()
    if auth.mode not in ("config", "backend"):
        raise ConfigError("auth.mode", "must be config or backend")
    if auth.mode == "backend" and not auth.user:
        raise ConfigError("auth.user", "the monitor account is required with mode backend")
    return auth


def _backends(bn: _Node) -> BackendsCfg:
    primary = parse_backend(bn.get("primary", required=True), bn.key("primary"))
    reps_raw = bn.get("replicas", []) or []
    if not isinstance(reps_raw, list):
        raise ConfigError(bn.key("replicas"), "must be a list")
    replicas: list[Address] = []
    weights: list[int] = []
    for i, r in enumerate(reps_raw):
        path = f"{bn.key('replicas')}[{i}]"
        if isinstance(r, dict):
            rn = _Node(r, path)
            replicas.append(parse_backend(rn.get("address", required=True), rn.key("address")))
            weights.append(_int(rn.get("weight", 1), rn.key("weight"), 0, 1000))
            rn.done()
        else:
            replicas.append(parse_backend(r, path))
            weights.append(1)
    pn = bn.child("pool")
    D = PoolCfg
    pool = PoolCfg(
        _int(pn.get("max_connections", D.max_connections), pn.key("max_connections"), 1, 100000),
        _num(pn.get("connect_timeout_s", D.connect_timeout_s), pn.key("connect_timeout_s"),
             0.01, 3600),
        _num(pn.get("acquire_timeout_s", D.acquire_timeout_s), pn.key("acquire_timeout_s"),
             0.01, 3600),
        _num(pn.get("idle_timeout_s", D.idle_timeout_s), pn.key("idle_timeout_s"), 1, 86400),
    )
    pn.done()
    failover_wait = _num(bn.get("failover_wait_s", BackendsCfg.failover_wait_s),
                         bn.key("failover_wait_s"), 0, 3600)
    btls = None
    if bn.get("tls") is not None:
        tn = bn.child("tls")
        btls = BackendTLSCfg(_str(tn.get("ca"), tn.key("ca")) if tn.get("ca") else None,
                             _bool(tn.get("verify", BackendTLSCfg.verify), tn.key("verify")))
        tn.done()
    bn.done()
    return BackendsCfg(primary, tuple(replicas), pool, tuple(weights), failover_wait, btls)


def _routing(rn: _Node) -> RoutingCfg:
    D = RoutingCfg
    routing = RoutingCfg(
        _choice(rn, "read_consistency", D.read_consistency, CONSISTENCY),
        _num(rn.get("max_replica_lag_s", D.max_replica_lag_s), rn.key("max_replica_lag_s"),
             0, 86400),
        _int(rn.get("max_wait_ms", D.max_wait_ms), rn.key("max_wait_ms"), 0, 60000),
    )
    rn.done()
    return routing


def _durability(dn: _Node, n_replicas: int) -> DurabilityCfg:
    D = DurabilityCfg
    durability = DurabilityCfg(
        _choice(dn, "require", D.require, ("strict", "warn", "off")),
        _choice(dn, "ack", D.ack, ("commit", "replica")),
        _int(dn.get("replica_acks", D.replica_acks), dn.key("replica_acks"), 1, 64),
        _int(dn.get("replica_ack_timeout_ms", D.replica_ack_timeout_ms),
             dn.key("replica_ack_timeout_ms"), 1, 600_000),
        _choice(dn, "on_ack_timeout", D.on_ack_timeout, ("degrade", "error")),
        _choice(dn, "track_commits", D.track_commits, ("hotrow", "all", "off")),
    )
    dn.done()
    if durability.ack == "replica" and n_replicas < durability.replica_acks:
        raise ConfigError("durability.replica_acks",
                          f"needs at least {durability.replica_acks} replica(s) in backends.replicas")
    return durability


def _limits(ln: _Node) -> LimitsCfg:
    D = LimitsCfg

    def num(key: str, lo: float, hi: float) -> float:
        return _num(ln.get(key, getattr(D, key)), ln.key(key), lo, hi)

    def whole(key: str, lo: int, hi: int) -> int:
        return _int(ln.get(key, getattr(D, key)), ln.key(key), lo, hi)

    limits = LimitsCfg(
        whole("max_client_connections", 1, 10**6),
        num("handshake_timeout_s", 0.1, 3600),
        num("shutdown_grace_s", 0, 3600),
        whole("max_allowed_packet", 1024, 1 << 30),
        _bool(ln.get("local_infile", D.local_infile), ln.key("local_infile")),
        whole("login_max_failures", 0, 10**6),
        num("login_window_s", 1, 86400),
        num("login_block_s", 1, 86400 * 7),
        num("shutdown_delay_s", 0, 3600),
    )
    ln.done()
    return limits


def _tls(tn: _Node) -> TLSCfg:
    tls = TLSCfg(_str(tn.get("cert", required=True), tn.key("cert")),
                 _str(tn.get("key", required=True), tn.key("key")),
                 _str(tn.get("ca"), tn.key("ca")) if tn.get("ca") else None,
                 _bool(tn.get("require", TLSCfg.require), tn.key("require")))
    tn.done()
    return tls


def load(path: str | Path) -> Config:
    """Read and validate a config file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError("", f"cannot read {p}: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("", f"{p}: invalid YAML: {e}") from None
    cfg = validate(raw, str(p))
    if cfg.tls is not None:  # relative certificate paths are relative to the config file
        def at(f: str | None) -> str | None:
            return f if f is None or Path(f).is_absolute() else str((p.parent / f).resolve())

        cfg = replace(cfg, tls=replace(cfg.tls, cert=at(cfg.tls.cert) or "",
                                       key=at(cfg.tls.key) or "", ca=at(cfg.tls.ca)))
    bt = cfg.backends.tls
    if bt is not None and bt.ca and not Path(bt.ca).is_absolute():
        cfg = replace(cfg, backends=replace(cfg.backends, tls=replace(
            bt, ca=str((p.parent / bt.ca).resolve()))))
    return cfg
