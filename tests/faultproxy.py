"""A fault-injecting TCP forwarder (as in asyncpg's tests): put it between the proxy and MariaDB
to cut live connections or refuse new ones, and watch the proxy tell clients the truth."""

from __future__ import annotations

import asyncio
import threading
import time

from proxy.tools.sandbox import free_port


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.refuse = False
        self.drop_replies = False  # server -> client bytes vanish (the reply to a COMMIT, say)
        self.drop_requests = False  # client -> server bytes vanish (the COMMIT never arrives)
        self.on_commit: str | None = None  # "drop_reply" / "drop_request" once a COMMIT passes
        self.trigger = b"\x03COMMIT"  # what on_commit looks for in client -> server bytes
        # The connection that sends bytes containing `hold_on` gets no replies until `release`
        # is set (`held` is set when that happens): a reply arrives as late as a test needs.
        self.hold_on: bytes | None = None
        self.held = threading.Event()
        self.release = threading.Event()
        self._conns: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if self.refuse:
            w.close()
            return
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            w.close()
            return
        self._conns.update((w, uw))

        holding = [False]

        async def pipe(a: asyncio.StreamReader, b: asyncio.StreamWriter, to_server: bool) -> None:
            try:
                while data := await a.read(65536):
                    if to_server and self.hold_on and self.hold_on in data:
                        self.hold_on, holding[0] = None, True
                        self.held.set()
                    while not to_server and holding[0] and not self.release.is_set():
                        await asyncio.sleep(0.01)
                    if to_server and self.on_commit and self.trigger in data:
                        trigger, self.on_commit = self.on_commit, None
                        if trigger == "drop_request":
                            self.drop_requests = True
                        else:
                            self.drop_replies = True
                    if self.drop_requests if to_server else self.drop_replies:
                        continue
                    b.write(data)
                    await b.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                b.close()

        await asyncio.gather(pipe(r, uw, True), pipe(ur, w, False))
        self._conns.discard(w)
        self._conns.discard(uw)

    def heal_after_trigger(self, delay: float = 0.3, timeout: float = 30.0) -> threading.Thread:
        """Once the armed trigger has fired (and `delay` later), drop every live connection and
        stop dropping bytes: the fault lasts exactly from the trigger to the cut."""

        def run() -> None:
            deadline = time.monotonic() + timeout
            while self.on_commit is not None and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(delay)
            self.cut()
            self.drop_replies = self.drop_requests = False

        th = threading.Thread(target=run, daemon=True)
        th.start()
        return th

    def cut(self) -> None:
        """Drop every live connection (like a backend crash, seen from the proxy)."""

        def _cut() -> None:
            for w in list(self._conns):
                w.transport.abort()
            self._conns.clear()

        self.loop.call_soon_threadsafe(_cut)

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
