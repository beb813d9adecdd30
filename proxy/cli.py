"""Command line: `seckill-proxy --config FILE` runs, `--check-config FILE` validates,
`seckill-proxy top` watches a running proxy, `seckill-proxy demo` runs a flash sale."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import os
import sys
import time
from typing import Any

from proxy import compiled
from proxy.core import config as C
from proxy.core.logctx import ConnIdFilter
from proxy.core.speedups import fast_enum_members

_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "conn_id", "taskName"}


def _exc_text(fmt: logging.Formatter, exc_info: Any) -> str:
    """The record's traceback, or what can be said of it when formatting it fails (seen: a
    mypyc re-raise handed the loop a freed exception object, core/aio.py, whose traceback
    raised TypeError; raised out of the loop's exception handler, that stopped the proxy)."""
    try:
        return fmt.formatException(exc_info)
    except Exception as e:  # noqa: BLE001 - a log line must never stop the proxy
        return f"(traceback not formatted: {type(e).__name__}: {e}) {exc_info[0]!r}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the client connection id when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        d: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        conn_id = getattr(record, "conn_id", None)
        if conn_id is not None:
            d["conn_id"] = conn_id
        for k, v in record.__dict__.items():  # fields given as `extra=`: fields, not text
            if k not in _RECORD_ATTRS and k not in d and not k.startswith("_"):
                d[k] = v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
        if record.exc_info:
            d["exc"] = _exc_text(self, record.exc_info)
        return json.dumps(d)


class TextFormatter(logging.Formatter):
    """For a person at a terminal: time, level, logger, [client id], message."""

    def format(self, record: logging.LogRecord) -> str:
        conn_id = getattr(record, "conn_id", None)
        line = (time.strftime("%H:%M:%S", time.localtime(record.created))
                + f".{int(record.msecs):03d} {record.levelname:<7} {record.name}"
                + (f" [{conn_id}]" if conn_id is not None else "") + f": {record.getMessage()}")
        if record.exc_info:
            line += "\n" + _exc_text(self, record.exc_info)
        return line


def raise_open_files(cfg: C.Config) -> str | None:
    """Raise the soft open-files limit to what the config needs (clients, backend pools, a
    margin), up to the hard limit; a warning when it stays below (the usual soft limit of
    1,024 is far under the default 10,000 clients)."""
    import resource

    pools = 1 + len(cfg.backends.replicas)
    need = cfg.limits.max_client_connections + pools * (cfg.backends.pool.max_connections + 16) + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return None
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    if target < need:
        return (f"open-files limit {target} is below the {need} this config may need "
                "(limits.max_client_connections and the backend pools): raise it "
                "(systemd LimitNOFILE=, ulimit -n) or lower limits.max_client_connections")
    return None


def _version() -> str:
    try:
        return importlib.metadata.version("seckill-proxy")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "top":
        from proxy.tools import top

        return top.main(args[1:])
    if args and args[0] == "demo":
        from proxy.tools import demo

        return demo.main(args[1:])
    ap = argparse.ArgumentParser(prog="seckill-proxy", description=__doc__)
    ap.add_argument("--config", default=os.environ.get("SECKILL_PROXY_CONFIG"),
                    help="YAML config file to run with (default: $SECKILL_PROXY_CONFIG)")
    ap.add_argument("--version", action="version", version=f"seckill-proxy {_version()}")
    ap.add_argument("--check-config", metavar="FILE", help="validate FILE and exit")
    a = ap.parse_args(args)
    if a.check_config:
        try:
            C.load(a.check_config)
        except C.ConfigError as e:
            print(f"config error: {e}", file=sys.stderr)
            return 2
        print(f"{a.check_config}: ok")
        return 0
    if not a.config:
        ap.error("--config FILE (or SECKILL_PROXY_CONFIG) is required")
    stale = compiled.stale()
    if stale:
        print(f"compiled modules whose source changed since the build: {', '.join(stale)}; "
              "rebuild them with `make deps` (or pip install -e .)", file=sys.stderr)
        return 2
    try:
        cfg = C.load(a.config)
    except C.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    text = cfg.log_format == "text" or (cfg.log_format == "auto" and sys.stderr.isatty())
    handler.setFormatter(TextFormatter() if text else JsonFormatter())
    handler.addFilter(ConnIdFilter())  # the client a line is about, as a field (logctx.py)
    logging.basicConfig(level=cfg.log_level, handlers=[handler])
    low = raise_open_files(cfg)
    if low is not None:
        logging.getLogger("seckill").warning("%s", low)
    fast_enum_members()  # (speedups.py says why)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency, but the proxy runs without it
        pass
    from proxy.ops.peers import WorkerSlot
    from proxy.process import die_with_parent, sd_notify, serve

    slot = WorkerSlot.from_env()  # set when this process is one of the workers
    if cfg.workers > 1 and slot is None:  # the supervisor (workers.py)
        from proxy.workers import supervise

        try:
            return asyncio.run(supervise(cfg, os.path.abspath(a.config), sd_notify))
        except OSError as e:
            print(f"cannot start: {e}", file=sys.stderr)
            return 1
    if slot is not None:
        die_with_parent()
    logging.getLogger("seckill").info(
        "hot modules compiled: %d of %d", len(compiled.loaded()), len(compiled.HOT))
    try:
        asyncio.run(serve(cfg))
    except OSError as e:
        print(f"cannot start: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
