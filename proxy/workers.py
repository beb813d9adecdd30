"""`workers: N > 1`: the proxy as a supervisor and N worker processes, as gunicorn and
uvicorn run them.

Each worker is the whole proxy of one core (its own event loop, pools, hot-row engine) and
listens on the client and admin ports itself (SO_REUSEPORT: the kernel spreads connections).
The supervisor serves no client: it starts the workers, starts again one that died (kill -9,
a crash: the others keep serving; the reservations of the dead one's open transactions are
resolved by escrow recovery, as for a crashed proxy), passes SIGHUP (reload) and SIGTERM (safe
shutdown) on, and serves /metrics (every worker's files added up by prometheus-client's
multiprocess mode), /healthz and /readyz (ready when every worker is).

Nothing about hot rows is coordinated here: the database is the only shared truth (row lock,
reservation and confirm tables), exactly as between two proxy instances.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from proxy.core import metrics as M
from proxy.core.config import Config
from proxy.ops import peers
from proxy.ops.peers import WorkerSlot

log = logging.getLogger("seckill.workers")

RESTART_BACKOFF_S = (0.2, 1.0, 5.0)  # after a worker that dies within 10 s of its start


class Supervisor:
    def __init__(self, cfg: Config, config_path: str) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.n = cfg.workers
        self.run_dir = tempfile.mkdtemp(prefix="seckill-proxy-")  # 0700: only this user
        self.metrics_dir = os.path.join(self.run_dir, "metrics")
        os.mkdir(self.metrics_dir)
        self.id_base = random.randint(1, 65535 - self.n)
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * self.n
        self.started: list[float] = [0.0] * self.n
        self.quick_deaths: list[int] = [0] * self.n
        self.stopping = False

    def slot(self, i: int) -> WorkerSlot:
        return WorkerSlot(i, self.n, self.run_dir, self.id_base)

    def spawn(self, i: int) -> None:
        env = {**os.environ, WorkerSlot.ENV: self.slot(i).env(),
               "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir}
        self.procs[i] = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "--config", self.config_path], env=env)
        self.started[i] = time.monotonic()
        log.info("worker %d started (pid %d)", i, self.procs[i].pid)  # type: ignore[union-attr]

    async def watch(self) -> None:
        """Start again a worker that died while the proxy is not stopping."""
        from prometheus_client.multiprocess import mark_process_dead

        while not self.stopping:
            await asyncio.sleep(0.2)
            for i, p in enumerate(self.procs):
                if p is None or p.poll() is None or self.stopping:
                    continue
                mark_process_dead(p.pid, self.metrics_dir)  # its live gauges leave the sums
                quick = time.monotonic() - self.started[i] < 10
                self.quick_deaths[i] = self.quick_deaths[i] + 1 if quick else 0
                delay = RESTART_BACKOFF_S[min(self.quick_deaths[i], len(RESTART_BACKOFF_S) - 1)]
                log.error("worker %d (pid %d) ended with %s; starting it again in %g s", i,
                          p.pid, p.returncode, delay)
                self.procs[i] = None
                asyncio.get_running_loop().call_later(delay, self._respawn, i)

    def _respawn(self, i: int) -> None:
        if not self.stopping and self.procs[i] is None:
            self.spawn(i)

    def signal_all(self, sig: int) -> None:
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.send_signal(sig)

    async def ask_all(self, req: dict[str, object]) -> list[dict[str, object] | None]:
        async def one(i: int) -> dict[str, object] | None:
            try:
                return await peers.call(self.slot(i).sock(i), req, timeout=3.0)
            except (OSError, TimeoutError, ValueError):
                return None

        return list(await asyncio.gather(*(one(i) for i in range(self.n))))

    async def ready(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "draining"
        answers = await self.ask_all({"op": "ready"})
        for i, a in enumerate(answers):
            if a is None:
                return False, f"worker {i} not running"
            if not a.get("ready"):
                return False, f"worker {i}: {a.get('why')}"
        return True, "ready"

    async def metrics(self) -> bytes:
        await self.ask_all({"op": "flush"})  # every worker's counters, as of now
        return M.render(self.metrics_dir)

    async def wait_up(self, timeout: float) -> bool:
        """Every worker answers on its socket (it listens once it does)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(a is not None for a in await self.ask_all({"op": "ping"})):
                return True
            if any(p is None or p.poll() is not None for p in self.procs):
                return False
            await asyncio.sleep(0.1)
        return False

    async def stop(self, grace: float) -> None:
        self.stopping = True
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
                p is not None and p.poll() is None for p in self.procs):
            await asyncio.sleep(0.05)
        for p in self.procs:
            if p is not None and p.poll() is None:
                log.warning("worker pid %d did not stop in time: killed", p.pid)
                p.kill()
                p.wait()
        shutil.rmtree(self.run_dir, ignore_errors=True)


async def supervise(cfg: Config, config_path: str, notify: Callable[[str], None]) -> int:
    """Run the workers until SIGINT/SIGTERM; 1 if they could not start."""
    from proxy.ops.httpd import start_http

    sup = Supervisor(cfg, config_path)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: sup.signal_all(signal.SIGHUP))
    loop.add_signal_handler(signal.SIGUSR1, lambda: sup.signal_all(signal.SIGUSR1))
    for i in range(sup.n):
        sup.spawn(i)
    http = None
    try:
        if not await sup.wait_up(60):
            log.error("workers did not start")
            return 1
        if cfg.metrics_listen is not None:
            http = await start_http(sup, cfg.metrics_listen, sup.metrics)
        watcher = asyncio.create_task(sup.watch())
        print(f"seckill-proxy ready: mysql://{cfg.users[0].name}:***@{cfg.listen}/  "
              f"(admin {cfg.admin.listen}, metrics {cfg.metrics_listen}, {sup.n} workers)",
              flush=True)
        notify("READY=1")
        await stop.wait()
        notify("STOPPING=1")
        watcher.cancel()
        return 0
    finally:
        lim = cfg.limits  # (/readyz says "draining" while the workers shut down)
        await sup.stop(lim.shutdown_delay_s + lim.shutdown_grace_s + 10)
        if http is not None:
            http.close()
