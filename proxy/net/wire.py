"""Sockets as the proxy uses them: one asyncio Protocol per connection, client or backend.

asyncio's StreamReader costs a task wake-up and several Python calls per read. The proxy owns
its sockets' protocol instead, for two reasons: awaitable reads stay available for everything
that is naturally sequential (handshake, transactions, hot-row batches), and a `sink` can take
a socket's bytes directly in the event loop's callback, which is how the fast lane
(`fastlane.py`) runs a plain statement without waking the session's task at all.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any, Final

from proxy.net import protocol as P
from proxy.net.compress import Compression, CompressionError
from proxy.net.tls import TLSTransport

log = logging.getLogger("seckill.wire")

_READ_HIGH: Final = 1 << 20  # stop reading a socket whose unread bytes exceed this
_READ_LOW: Final = 1 << 18


class PacketIO(asyncio.Protocol):
    """Reader and writer of one socket (the API subset of StreamReader/StreamWriter in use)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.buf = bytearray()
        self.eof = False
        self.exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._read_paused = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        # Fast lane hooks: `sink` gets bytes instead of the buffer; `sink_lost` hears of a close.
        self.sink: Callable[[bytes], None] | None = None
        self.sink_lost: Callable[[], None] | None = None
        self.on_resume: Callable[[], None] | None = None  # writing may go on again
        # A command the proxy answered itself and sends later, ahead of the next one (a
        # deferred BEGIN, fastlane.py): `prefix` goes out with the next write, and the reply
        # packet it earns is dropped on arrival (`skip`), so every reader sees only the reply
        # to the command it sent. An ERR in its place means the command after it ran outside
        # what the client was told: the connection is cut, and every reader (lane, general
        # path, hot-row engine) reports it lost, as for any connection lost mid-statement.
        self.prefix = b""
        self.skip = 0
        self._skipbuf = bytearray()
        # sees each OK that `skip` drops (the fast lane checks escrow confirm rows' counts)
        self.skipped_ok: Callable[[bytes], None] | None = None
        # sees an ERR in a dropped packet's place; True: it answers for it (the fast lane, for
        # a confirm row that failed), else the connection is cut
        self.skipped_err: Callable[[bytes], bool] | None = None
        # kept from connection_made: asking for the running loop costs a getpid() each time
        # (Python 3.11), and a read waits once per command
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.taken_seq = 0  # the sequence id of the packet `take_packet` returned

    # ---- protocol callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        if self.skip:
            data = self._skip_replies(data)
            if not data:
                return
        if self.sink is not None:
            self.sink(data)
            return
        self.buf += data
        if len(self.buf) > _READ_HIGH and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def _skip_replies(self, data: bytes) -> bytes:
        """Drop the next `skip` whole packets (one-packet replies: OK or ERR); the bytes after
        them, if any, are the reply the reader waits for. Read where they arrived: only a
        packet not yet whole waits in `_skipbuf` (copying every chunk through it cost 2.7% of
        a seed order's CPU)."""
        b = self._skipbuf
        if b:
            b += data
            data = bytes(b)
            b.clear()
        pos, end = 0, len(data)
        while self.skip:
            if end - pos < 4:
                break
            n = data[pos] | (data[pos + 1] << 8) | (data[pos + 2] << 16)
            if end - pos < 4 + n:
                break
            if n and data[pos + 4] == 0xFF:
                if self.skipped_err is not None and self.skipped_err(data[pos + 4:pos + 4 + n]):
                    self.skip = 0  # (MariaDB ran nothing after it: what follows is the reply
                    return data[pos + 4 + n:]  # to a command sent behind, a confirm row's COM_PING)
                log.error("a command sent ahead of another (a deferred BEGIN, an escrow confirm "
                          "row) failed: %r; connection cut", data[pos + 4:pos + 4 + n][:200])
                self.skip = 0
                self.transport.abort()
                return b""
            if self.skipped_ok is not None:
                self.skipped_ok(data[pos + 4:pos + 4 + n])  # (it may end the skipping: skip 0)
            pos += 4 + n
            if self.skip:
                self.skip -= 1
        if self.skip:  # the next packet to drop is not whole yet
            b += data[pos:]
            return b""
        return data[pos:] if pos else data

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._write_paused = False
        if exc is not None:
            self.exc = exc
        self._wake()
        for w in self._drain_waiters:
            if not w.done():
                w.set_exception(ConnectionResetError("Connection lost"))
        self._drain_waiters.clear()
        if self.sink_lost is not None:
            lost, self.sink_lost, self.sink = self.sink_lost, None, None
            lost()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)
        self._drain_waiters.clear()
        if self.on_resume is not None:
            self.on_resume()

    # ---- reading --------------------------------------------------------------------------

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait(self) -> None:
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    @property
    def waiting(self) -> bool:
        """A task is parked in a read (and has not been woken yet)."""
        w = self._waiter
        return w is not None and not w.done()

    def _consumed(self) -> None:
        if self._read_paused and len(self.buf) < _READ_LOW:
            self._read_paused = False
            self.transport.resume_reading()

    def skip_reply(self, head: bytes) -> bytes:
        """Drop the next one-packet reply, whose first bytes (`head`) may have come already
        (the COM_PING behind a confirm row's COMMIT, backends/confirms.py). Dropped at once
        when it came whole, as it nearly always does: a connection still waiting to drop a
        reply takes no deferred BEGIN (lazybegin.py), which cost the seed's transaction a
        round trip per order. Returns what came after it (nothing, unless out of step)."""
        self.skip += 1
        if not head:
            return b""
        return self._skip_replies(head)  # (behind what waits in the buffer, if anything)

    def take_packet(self) -> bytes | None:
        """The next packet's payload when the buffer holds all of it (its sequence id in
        `taken_seq`), else None and the buffer untouched: a reader of a reply that came whole
        (nearly every service statement's) skips two coroutines a packet (read_packet)."""
        buf = self.buf
        have = len(buf)
        if have < 4:
            return None
        n = buf[0] | (buf[1] << 8) | (buf[2] << 16)
        if n >= P.MAX_PACKET or have < 4 + n:  # (a packet in parts: the awaiting reader's)
            return None
        self.taken_seq = buf[3]
        data = bytes(buf[4:4 + n])
        del buf[:4 + n]
        self._consumed()
        return data

    async def readexactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if self.eof:
                if self.exc is not None and not self.buf:
                    raise ConnectionResetError(str(self.exc))
                partial = bytes(self.buf)
                self.buf.clear()
                raise asyncio.IncompleteReadError(partial, n)
            await self._wait()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        self._consumed()
        return data

    async def read(self, n: int) -> bytes:
        """Up to `n` bytes; b"" at end of stream."""
        while not self.buf:
            if self.eof:
                if self.exc is not None:
                    raise ConnectionResetError(str(self.exc))
                return b""
            await self._wait()
        if len(self.buf) <= n:
            data = bytes(self.buf)
            self.buf.clear()
        else:
            data = bytes(self.buf[:n])
            del self.buf[:n]
        self._consumed()
        return data

    def at_eof(self) -> bool:
        return self.eof and not self.buf

    # ---- writing --------------------------------------------------------------------------

    def write(self, data: bytes | bytearray) -> None:
        """Write, or drop the bytes if the peer is gone (connection_lost tells the rest); a
        closed uvloop transport raises on write, an asyncio one ignores it."""
        t = self.transport
        if self.prefix:
            data = self.prefix + data
            self.prefix = b""
            self.skip += 1
        if not t.is_closing():
            t.write(data)

    async def drain(self) -> None:
        if self.transport.is_closing():
            await asyncio.sleep(0)  # let connection_lost run, as StreamWriter.drain does
            if self.eof:
                raise ConnectionResetError("Connection lost")
        if not self._write_paused:
            return
        w = self._loop.create_future()
        self._drain_waiters.append(w)
        await w

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def adopt(writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> PacketIO:
    """Take over a socket that a StreamReader served so far (aiomysql's, after its login)."""
    io = PacketIO()
    transport: Any = writer.transport
    leftover = bytes(getattr(reader, "_buffer", b""))
    transport.set_protocol(io)
    io.connection_made(transport)
    if leftover:
        io.buf += leftover
    if transport.is_closing():
        io.eof = True
    else:
        transport.resume_reading()  # the StreamReader may have paused it
    return io


class ClientIO(PacketIO):
    """The client side: a protocol that starts the session task, and offers each idle command
    to the fast lane before the session task ever sees it."""

    def __init__(self, start: Callable[[ClientIO], Any]) -> None:
        super().__init__()
        self._start = start
        self.task: asyncio.Task[None] | None = None
        # The fast lane: called with a chunk that arrived while the session task is idle
        # between commands; True means it took the command.
        self.fast: Callable[[bytes], bool] | None = None
        self.armed = False  # the session task waits for the header of its next command
        self.last_activity = 0.0  # loop time of the last bytes from the client (wait_timeout)
        self.held = False  # a fast-lane command is in flight: buffer, wake nobody
        self.tls: TLSTransport | None = None  # after the client's SSLRequest (tls.py)
        self.zip: Compression | None = None  # after the login OK, if negotiated (compress.py)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.task = self._loop.create_task(self._start(self))

    def data_received(self, data: bytes) -> None:
        self.last_activity = self._loop.time()
        tls = self.tls
        if tls is not None:
            data = tls.feed(data)
            if tls.closed_by_peer:
                if data:
                    super().data_received(data)
                self.eof_received()
                return
            if not data:
                return
        if self.zip is not None:
            data = self._unzip(data)
            if not data:
                return
        if (self.armed and not self.held and not self.buf and self.fast is not None
                and self.waiting and self.fast(data)):
            return
        super().data_received(data)

    def _wake(self) -> None:
        if not self.held:  # while the fast lane answers a command, the task sleeps on
            super()._wake()

    def eof_received(self) -> bool:
        """A MySQL client never half-closes (it sends COM_QUIT): EOF means it is gone. Abort at
        once; a graceful close would wait for a reply it will never read to drain, and hold the
        backend connection that produces it."""
        super().eof_received()
        self.transport.abort()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.held and self.on_resume is not None:
            self.on_resume()  # nobody will read: let the lane's reply drain to nowhere

    async def start_tls(self, ctx: ssl.SSLContext) -> None:
        """Upgrade after the client's SSLRequest: bytes already read (its ClientHello, sent
        without waiting) are the first the TLS layer gets."""
        tls = TLSTransport(self.transport, ctx)
        self.tls = tls
        self.transport = tls  # type: ignore[assignment]
        early = bytes(self.buf)
        self.buf.clear()
        if early:
            plain = tls.feed(early)
            if plain:
                self.buf += plain
        await tls.handshake

    def start_compression(self) -> None:
        """From now on frames both ways (the login OK went out plain). Bytes already read are
        the client's first frames."""
        z = Compression(self.transport)
        self.zip = z
        self.transport = z  # type: ignore[assignment]
        early = bytes(self.buf)
        self.buf.clear()
        if early:
            self.buf += self._unzip(early)

    def _unzip(self, data: bytes) -> bytes:
        """Frames in, the packets they carry out; a bad frame closes the connection."""
        assert self.zip is not None
        try:
            return self.zip.feed(data)
        except CompressionError as e:
            log.warning("client sent a bad compressed frame; closing: %s", e)
            self.transport.abort()
            return b""

    def release(self) -> None:
        """The fast lane's command is answered: whatever came meanwhile goes to the task."""
        self.held = False
        self.on_resume = None
        if self.buf or self.eof:
            self._wake()
