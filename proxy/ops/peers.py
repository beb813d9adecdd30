"""Workers talking to each other: with `workers: N > 1` the proxy is N processes sharing the
listening port (workers.py), and a few things must still be the whole proxy's:

* a client id names one worker's client (ids are `(id_base + worker) << 16 | seq`, so the
  owner is read off the id): `KILL` of another worker's client is done by that worker;
* `SHOW PROCESSLIST` replaces every proxy client's backend thread id by its client id, whichever
  worker holds it;
* admin commands that show state (`SHOW BACKENDS`, `SHOW HOT KEYS`, `SHOW QUERY DIGEST`) add
  every worker's part, and those that change it (`SET hotrow.mode`, `RELOAD CONFIG`, ...) are
  done by every worker;
* the supervisor asks each worker to push its counters before a scrape (`flush`) and whether it
  is ready.

One JSON line each way over a unix socket per worker in the supervisor's private run
directory. Hot rows are not coordinated here: the database is their only shared truth (row
lock, reservation and confirm tables), as between two proxy instances.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.core import metrics as M
from proxy.exec.local import stop_client
from proxy.ops.admin import AdminHost, peer_command

log = logging.getLogger("seckill.workers")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
CALL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class WorkerSlot:
    """Which worker this process is, of how many, and where its peers listen (from the
    environment the supervisor starts it with)."""

    index: int
    count: int
    run_dir: str
    id_base: int  # mysql-mimic's server id of worker 0 (client ids' upper 16 bits)

    ENV = "SECKILL_WORKER"

    @classmethod
    def from_env(cls) -> WorkerSlot | None:
        v = os.environ.get(cls.ENV)
        if not v:
            return None
        index, count, base, run_dir = v.split(":", 3)
        return cls(int(index), int(count), run_dir, int(base))

    def env(self) -> str:
        return f"{self.index}:{self.count}:{self.id_base}:{self.run_dir}"

    def sock(self, i: int) -> str:
        return os.path.join(self.run_dir, f"w{i}.sock")

    @property
    def server_id(self) -> int:
        return self.id_base + self.index

    def owner(self, connection_id: int) -> int | None:
        """The worker whose client this id is (None: no proxy client id of this proxy)."""
        j = (connection_id >> 16) - self.id_base
        return j if 0 <= j < self.count else None

    def others(self) -> list[int]:
        return [j for j in range(self.count) if j != self.index]


async def call(path: str, req: dict[str, Any], timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
    """One request to the worker listening at `path`; OSError/TimeoutError when it cannot."""
    async def go() -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(path, limit=1 << 24)
        try:
            writer.write(json.dumps(req).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
        if not line:
            raise OSError(f"worker at {path} closed without an answer")
        out: dict[str, Any] = json.loads(line)
        return out

    return await asyncio.wait_for(go(), timeout)


class Peers:
    """This worker's calls to the others (exec/local.py's KILL and process list, the admin
    console's fan-out)."""

    def __init__(self, slot: WorkerSlot) -> None:
        self.slot = slot

    def owner(self, connection_id: int) -> int | None:
        j = self.slot.owner(connection_id)
        return None if j == self.slot.index else j

    async def ask(self, worker: int, req: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return await call(self.slot.sock(worker), req)
        except (OSError, TimeoutError, ValueError) as e:  # restarting, or gone
            log.warning("worker %d did not answer %s: %s", worker, req.get("op"), e)
            return None

    async def ask_all(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        """Every other worker's answer (those that answered)."""
        got = await asyncio.gather(*(self.ask(j, req) for j in self.slot.others()))
        return [g for g in got if g is not None]

    async def who(self, worker: int, connection_id: int) -> str | None:
        """The user of that worker's client `connection_id`; None if it has no such client."""
        r = await self.ask(worker, {"op": "who", "id": connection_id})
        return None if r is None else r.get("user")

    async def kill(self, worker: int, connection_id: int, query_only: bool) -> bytes | None:
        """Have the owner stop its client (its right to was checked by the caller): an ERR
        packet if MySQL refused the backend KILL."""
        r = await self.ask(worker, {"op": "kill", "id": connection_id, "query_only": query_only})
        err = None if r is None else r.get("err")
        return bytes.fromhex(err) if err else None

    async def client_ids_by_thread(self, pool_key: str) -> dict[int, int]:
        out: dict[int, int] = {}
        for r in await self.ask_all({"op": "threads", "pool": pool_key}):
            out.update({int(k): int(v) for k, v in r.get("ids", {}).items()})
        return out


async def serve(path: str, handlers: dict[str, Handler]) -> asyncio.Server:
    """This worker's socket for its peers and the supervisor."""
    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            req = json.loads(await reader.readline() or b"{}")
            h = handlers.get(str(req.get("op")))
            out = await h(req) if h is not None else {"error": f"unknown op {req.get('op')!r}"}
        except Exception as e:  # noqa: BLE001 - a bad request must not hurt the worker
            log.warning("peer request failed: %r", e)
            out = {"error": str(e)}
        try:
            writer.write(json.dumps(out, default=str).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    if os.path.exists(path):
        os.unlink(path)  # left by this worker's previous life (kill -9)
    srv = await asyncio.start_unix_server(one, path, limit=1 << 24)
    os.chmod(path, 0o600)
    return srv


class PeerHost(AdminHost, Protocol):
    """What a worker answers its peers and the supervisor about (server.App)."""

    def find_client(self, connection_id: int) -> Any: ...

    def client_ids_by_thread(self, pool: Any) -> dict[int, int]: ...

    async def ready(self) -> tuple[bool, str]: ...


def handlers(app: PeerHost) -> dict[str, Handler]:
    """The requests a worker answers (see the module's docstring)."""

    async def ping(_: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "pid": os.getpid()}

    async def ready(_: dict[str, Any]) -> dict[str, Any]:
        ok, why = await app.ready()
        return {"ready": ok, "why": why}

    async def flush(_: dict[str, Any]) -> dict[str, Any]:
        M.flush()
        return {"ok": True}

    async def who(req: dict[str, Any]) -> dict[str, Any]:
        c = app.find_client(int(req["id"]))
        return {"user": c.session.username if c is not None else None}

    async def kill(req: dict[str, Any]) -> dict[str, Any]:
        c = app.find_client(int(req["id"]))
        if c is None:
            return {"err": None}
        # as the target's own user: the asker checked its right to (MySQL's owner rule)
        err = await stop_client(c, bool(req.get("query_only")), c.session.username or "",
                                c.session.password)
        return {"err": err.hex() if err else None}

    async def threads(req: dict[str, Any]) -> dict[str, Any]:
        pool = app.pools.get(str(req.get("pool")))
        ids = app.client_ids_by_thread(pool) if pool is not None else {}
        return {"ids": {str(k): v for k, v in ids.items()}}

    async def admin(req: dict[str, Any]) -> dict[str, Any]:
        return await peer_command(app, str(req.get("sql", "")))

    return {"ping": ping, "ready": ready, "flush": flush, "who": who, "kill": kill,
            "threads": threads, "admin": admin}
