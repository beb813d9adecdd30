"""The proxy as a process: start the server, tell systemd it is ready, reload on SIGHUP, and
on SIGINT/SIGTERM stop as PgBouncer's safe shutdown does (not ready at once, optionally keep
serving for `limits.shutdown_delay_s` while load balancers move, then drain and close).

Apart from server.py, which is the application (what runs); this is how it is run.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket

from proxy.core.config import Config, ConfigError
from proxy.server import App

log = logging.getLogger("seckill.server")


def sd_notify(state: str) -> None:
    """systemd's readiness protocol (deploy/systemd, Type=notify): one datagram to
    $NOTIFY_SOCKET; nothing when not run by systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # an abstract socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(state.encode(), addr)
        except OSError as e:
            log.warning("systemd notification %s not sent: %s", state, e)


def die_with_parent() -> None:
    """A worker (workers.py) ends when its supervisor does, even one killed with -9."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the supervisor's own shutdown still works
        pass


def dump_tasks(app: App) -> None:
    """SIGUSR1: every task of the loop and where it waits, logged (a client that hangs while
    the proxy idles is waiting on something: this says on what). Tasks of compiled modules show
    their coroutine's name only."""
    tasks = asyncio.all_tasks()
    lines = [f"{len(tasks)} tasks"]
    for t in tasks:
        lines.append(f"-- {t.get_name()}: {' > '.join(awaiting(t.get_coro()))}")
    for c in list(app.connections):
        try:
            lines.append(f"client {c.connection_id}: {describe(c.session)}")
        except Exception as e:  # noqa: BLE001 - a debugging aid must not raise
            lines.append(f"client {c.connection_id}: {e!r}")
    for key, pool in app.pools.items():
        lines.append(f"pool {key}: {pool.describe()}")
    if hasattr(app, "hotrow"):  # (built by start)
        lines += app.hotrow.describe()
    log.warning("SIGUSR1: %s", "\n".join(lines))


def awaiting(coro: object) -> list[str]:
    """Where a task waits: its chain of coroutines (`cr_await`), innermost last; a compiled
    coroutine or a future ends it."""
    out = []
    for _ in range(30):
        frame = getattr(coro, "cr_frame", None)
        if frame is None:
            out.append(repr(coro)[:160])
            break
        out.append(f"{getattr(coro, '__qualname__', '?')}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None)
        if coro is None:
            break
    return out


def describe(s: object) -> str:
    """A session as the task dump shows it: what holds it (its lane's command, member,
    ticket; its lease)."""
    lane = getattr(s, "lane", None)
    lease = getattr(s, "lease", None)
    parts = [f"busy={getattr(s, 'busy', '?')} status={getattr(s, 'status', '?')}",
             f"lease={getattr(lease, 'state', '?')} "
             f"thread={getattr(getattr(lease, 'conn', None), 'thread_id', None)}"]
    if lane is not None:
        hot = getattr(lane, "hot", None)
        parts.append(f"lane: conn={lane.conn!r} shape={getattr(lane.shape, 'digest', None)!r} "
                     f"plan={getattr(lane.plan, 'route', None)} ticket={lane.ticket is not None} "
                     f"member={getattr(hot, 'member', None) is not None} "
                     f"task={getattr(hot, 'task', None)!r} fail={lane._fail_task!r}")
    return " ".join(parts)


async def serve(cfg: Config) -> None:
    """Run until SIGINT/SIGTERM, then drain and shut down."""
    app = App(cfg)
    await app.start()
    # Statements allocate short-lived objects freed by reference counting; the cycle collector
    # need not scan the long-lived startup objects (freeze) nor run every 700 allocations.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if app.slot is not None:  # a worker: Ctrl-C reaches the supervisor, which says when to stop
        loop.add_signal_handler(signal.SIGINT, lambda: None)

    def hup() -> None:  # PgBouncer's and PgCat's habit: SIGHUP reloads the config
        try:
            notes = app.reload()
        except ConfigError as e:
            log.error("SIGHUP: config not reloaded: %s", e)
            return
        log.info("SIGHUP: config reloaded%s", (": " + "; ".join(notes)) if notes else "")

    loop.add_signal_handler(signal.SIGHUP, hup)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks, app)
    if app.slot is not None:
        log.info("worker %d of %d ready (pid %d)", app.slot.index, app.slot.count, os.getpid())
    else:
        print(f"seckill-proxy ready: mysql://{cfg.users[0].name}:***@{cfg.listen}/  "
              f"(admin {cfg.admin.listen}, metrics {cfg.metrics_listen})", flush=True)
        sd_notify("READY=1")
    await stop.wait()
    if app.slot is None:
        sd_notify("STOPPING=1")
    delay = app.cfg.limits.shutdown_delay_s
    if delay > 0:  # /readyz fails now; clients are served until the endpoints have moved
        app.stopping = True
        stop.clear()
        log.info("stopping: not ready, serving for %g s more (limits.shutdown_delay_s)", delay)
        try:  # a second SIGTERM/SIGINT cuts the delay short
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            pass
    log.info("shutting down")
    await app.shutdown()
