"""Fuzzing the edges a hostile client reaches: the TLS upgrade, COM_CHANGE_USER, the admin port
and the prepared-statement commands. Each case is a seeded random walk: `make test` runs a
small fixed corpus (seeds 0..FUZZ_CASES), `make fuzz` (FUZZ_SECONDS) keeps drawing new seeds
until the time is up. The property is always the same: the proxy answers or closes, never
hangs or dies, and serves the next client."""

from __future__ import annotations

import os
import random
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pymysql
import pytest

from proxy.tools.sandbox import Sandbox

from .conftest import ProxyProc, make_config, start_proxy
from .test_robustness import alive, raw_authed, recv_packet, send_packet

CASES = int(os.environ.get("FUZZ_CASES", "40"))
SECONDS = float(os.environ.get("FUZZ_SECONDS", "0"))  # make fuzz: run this long per target


def seeds() -> Iterator[int]:
    """The fixed corpus, then (under `make fuzz`) fresh seeds until the time is up."""
    yield from range(CASES)
    deadline = time.monotonic() + SECONDS
    n = CASES
    while time.monotonic() < deadline:
        yield n
        n += 1


def blob(rnd: random.Random, lo: int = 0, hi: int = 96) -> bytes:
    return bytes(rnd.getrandbits(8) for _ in range(rnd.randint(lo, hi)))


def exchange(s: socket.socket, payload: bytes, seq: int = 0) -> None:
    try:
        send_packet(s, payload, seq)
        recv_packet(s)
    except OSError:
        pass  # closed or no reply within the timeout: both fine


def run_cases(target: ProxyProc, case: Callable[[random.Random], None]) -> None:
    for seed in seeds():
        case(random.Random(seed))
    assert alive(target)


def test_fuzz_change_user_and_prepared_commands(proxy: ProxyProc) -> None:
    def case(rnd: random.Random) -> None:
        s = raw_authed(proxy)
        s.settimeout(1)
        try:
            kind = rnd.choice(["change_user", "prepare_then", "stmt_cmd"])
            if kind == "change_user":
                exchange(s, b"\x11" + blob(rnd))
            elif kind == "prepare_then":
                send_packet(s, b"\x16SELECT ?, ?")
                ok = recv_packet(s)
                for _ in range(4):  # param and column definitions, EOFs
                    try:
                        recv_packet(s)
                    except OSError:
                        break
                sid = ok[1:5] if ok[:1] == b"\x00" else blob(rnd, 4, 4)
                cmd = rnd.choice([b"\x17", b"\x18", b"\x19", b"\x1a", b"\x1c"])
                exchange(s, cmd + sid + blob(rnd))
            else:
                exchange(s, rnd.choice([b"\x17", b"\x18", b"\x19", b"\x1a", b"\x1c", b"\x1b"])
                         + blob(rnd))
        finally:
            s.close()

    run_cases(proxy, case)


def test_fuzz_admin_port(proxy: ProxyProc) -> None:
    def case(rnd: random.Random) -> None:
        if rnd.random() < 0.5:  # garbage handshake response
            s = socket.create_connection(("127.0.0.1", proxy.admin_port), timeout=2)
            try:
                recv_packet(s)
                body = blob(rnd, 0, 80)
                s.sendall(struct.pack("<I", len(body) | (1 << 24)) + body)
                recv_packet(s)
            except OSError:
                pass
            finally:
                s.close()
            return
        c = pymysql.connect(host="127.0.0.1", port=proxy.admin_port, user="admin",
                            password="admin")
        s = c._sock
        c._sock = None
        assert s is not None
        s.settimeout(1)
        try:
            cmd = rnd.choice([b"\x03", b"\x03SHOW ", b"\x03SET hotrow.mode = ", b"\x16",
                              b"\x11", b"\x0e", b"\x1f", bytes([rnd.getrandbits(8)])])
            exchange(s, cmd + blob(rnd))
        finally:
            s.close()

    run_cases(proxy, case)
    c = pymysql.connect(host="127.0.0.1", port=proxy.admin_port, user="admin", password="admin")
    with c.cursor() as cur:
        cur.execute("SHOW HELP")
        assert cur.fetchall()
    c.close()


@pytest.fixture(scope="module")
def tls_proxy(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProc]:
    from proxy.tools.sandbox import make_certs

    tmp: Path = tmp_path_factory.mktemp("fuzz-tls")
    certs = make_certs(tmp / "tls")
    p = start_proxy(tmp, make_config(sandbox, tls={"cert": certs["cert"], "key": certs["key"]}))
    try:
        yield p
    finally:
        p.stop()


def ssl_request(caps: int = 0x000FA68D) -> bytes:
    return struct.pack("<IIB23s", caps | 0x800, 1 << 24, 45, b"")  # CLIENT_SSL set


def test_fuzz_tls_upgrade(tls_proxy: ProxyProc) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def case(rnd: random.Random) -> None:
        s = socket.create_connection(("127.0.0.1", tls_proxy.port), timeout=2)
        try:
            recv_packet(s)
            kind = rnd.choice(["garbage_hello", "short_request", "tls_then_garbage",
                               "request_and_hello_together"])
            if kind == "garbage_hello":  # SSLRequest, then bytes that are no ClientHello
                s.sendall(struct.pack("<I", 32 | (1 << 24)) + ssl_request())
                s.sendall(blob(rnd, 1, 200))
                s.recv(100)
            elif kind == "short_request":
                body = ssl_request()[: rnd.randint(0, 31)]
                s.sendall(struct.pack("<I", len(body) | (1 << 24)) + body)
                s.recv(100)
            else:
                s.sendall(struct.pack("<I", 32 | (1 << 24)) + ssl_request())
                t = ctx.wrap_socket(s, do_handshake_on_connect=False)
                t.settimeout(2)
                t.do_handshake()
                body = blob(rnd, 0, 120)  # garbage handshake response inside TLS
                t.sendall(struct.pack("<I", len(body) | (2 << 24)) + body)
                t.recv(100)
                s = t
        except OSError:
            pass
        finally:
            s.close()

    run_cases(tls_proxy, case)
