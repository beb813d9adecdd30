"""The config validator (core/config.py), pure: a config that leaves keys out gets the
dataclasses' defaults (configmodel.py: every default stated once), and bad values are refused
with the key path and what is allowed."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.config import (
    AuthCfg,
    ConfigError,
    DurabilityCfg,
    HotRowCfg,
    LimitsCfg,
    PoolCfg,
    RoutingCfg,
    validate,
)

MINIMAL: dict[str, Any] = {"admin": {"users": [{"name": "admin", "password": "admin"}]},
                           "users": [{"name": "app", "password": "app"}],
                           "backends": {"primary": "127.0.0.1:3307"}}


def test_left_out_keys_take_the_dataclasses_defaults() -> None:
    cfg = validate(MINIMAL)
    assert cfg.backends.pool == PoolCfg()
    assert cfg.limits == LimitsCfg()
    assert cfg.routing == RoutingCfg()
    assert cfg.durability == DurabilityCfg()
    assert cfg.hotrow == HotRowCfg()
    assert cfg.auth == AuthCfg()
    assert (cfg.log_level, cfg.slow_query_ms, cfg.log_format) == ("INFO", 1000, "auto")
    assert (str(cfg.listen), str(cfg.admin.listen), str(cfg.metrics_listen)) == (
        "127.0.0.1:6033", "127.0.0.1:6032", "127.0.0.1:9104")
    assert cfg.admin.max_connections == 16 and cfg.backends.failover_wait_s == 10.0
    assert cfg.tls is None and cfg.backends.tls is None


def _with(path: str, value: Any) -> dict[str, Any]:
    """MINIMAL with `a.b.c` set to value."""
    import copy

    out = copy.deepcopy(MINIMAL)
    node = out
    *parents, last = path.split(".")
    for k in parents:
        node = node.setdefault(k, {})
    node[last] = value
    return out


@pytest.mark.parametrize("path,value,message", [
    ("backends.pool.max_connections", 0, "backends.pool.max_connections: value must be 1..100000"),
    ("backends.pool.max_conections", 5, "backends.pool.max_conections: unknown key"),
    ("limits.login_block_s", "x", "limits.login_block_s: must be a number"),
    ("limits.local_infile", "yes", "limits.local_infile: must be true or false"),
    ("routing.read_consistency", "strong",
     "routing.read_consistency: must be one of eventual, session, global, primary"),
    ("durability.ack", "sync", "durability.ack: must be one of commit, replica"),
    ("durability.ack", "replica", "durability.replica_acks: needs at least 1 replica(s)"),
    ("hotrow.mode", "fast", "hotrow.mode: must be one of off, queue, merge, auto"),
    ("hotrow.merge.max_batch", 0, "hotrow.merge.max_batch: value must be 1..100000"),
    ("auth.mode", "ldap", "auth.mode: must be config or backend"),
    ("log_format", "xml", "log_format: must be text, json or auto"),
    ("listen", "nohost", "listen: must be host:port"),
])
def test_bad_values_name_the_key(path: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        validate(_with(path, value))
    assert message in str(e.value)
