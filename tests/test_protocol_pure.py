"""Packet helpers (pure): OK packets with session-state tracking from both servers."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.net import protocol as P
from proxy.net.checks import check_handshake_response
from proxy.net.wire import PacketIO

U = "3e11fa47-71ca-11e1-9e33-c80aa9429562"


def ok_with_state(entries: list[tuple[int, bytes]], info: bytes = b"", affected: int = 1,
                  insert_id: int = 0) -> bytes:
    block = b"".join(bytes((kind,)) + P.enc_lenenc_str(data) for kind, data in entries)
    status = P.SERVER_STATUS_AUTOCOMMIT | P.SERVER_SESSION_STATE_CHANGED
    return (b"\x00" + P.enc_lenenc_int(affected) + P.enc_lenenc_int(insert_id)
            + struct.pack("<HH", status, 0) + P.enc_lenenc_str(info) + P.enc_lenenc_str(block))


def test_mariadb_last_gtid_and_variables() -> None:
    sysvars = (P.enc_lenenc_str(b"last_gtid") + P.enc_lenenc_str(b"0-1-42")
               + P.enc_lenenc_str(b"time_zone") + P.enc_lenenc_str(b"+08:00"))
    ok = P.parse_ok(ok_with_state([(P.TRACK_SYSTEM_VARIABLES, sysvars),
                                   (P.TRACK_SCHEMA, P.enc_lenenc_str(b"shop")),
                                   (P.TRACK_STATE_CHANGE, P.enc_lenenc_str(b"1"))], b"Rows matched: 1"), True)
    assert ok.gtid == "0-1-42"
    assert ok.sysvars == {"time_zone": "+08:00"}  # last_gtid is taken out of the variables
    assert ok.schema == "shop" and ok.state_changed and ok.info == b"Rows matched: 1"


def test_mysql_own_gtid_tracker() -> None:
    # SESSION_TRACK_GTIDS: one byte encoding specification (0), then the GTID set.
    data = b"\x00" + P.enc_lenenc_str(f"{U}:17".encode())
    ok = P.parse_ok(ok_with_state([(P.TRACK_GTIDS, data)]), True)
    assert ok.gtid == f"{U}:17"


def test_ok_without_tracking_and_rebuilt_for_clients() -> None:
    raw = b"\x00\x03\x07" + struct.pack("<HH", P.SERVER_STATUS_AUTOCOMMIT, 2) + P.enc_lenenc_str(b"Records: 3")
    ok = P.parse_ok(raw, False)
    assert (ok.affected_rows, ok.last_insert_id, ok.warnings, ok.info) == (3, 7, 2, b"Records: 3")
    assert P.make_ok(3, 7, P.SERVER_STATUS_AUTOCOMMIT | P.SERVER_SESSION_STATE_CHANGED, 2, b"Records: 3") == raw


_COUNT = st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1))


@given(_COUNT, _COUNT, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
       st.sampled_from([b"", b"Rows matched: 1  Changed: 1  Warnings: 0"]), st.booleans(),
       st.sampled_from([b"", b"\x00\x03\x01\x01x"]))
def test_ok_packet_is_the_protocol_s_layout_whatever_path_builds_it(
        affected: int, insert_id: int, status: int, warnings: int, info: bytes, eof: bool,
        state: bytes) -> None:
    """make_ok's one-struct shortcut (both counts under 251, no strings) and its general
    path build the same bytes: header, two length-encoded counts, status, warnings, info."""
    flags = (status | P.SERVER_SESSION_STATE_CHANGED if state
             else status & ~P.SERVER_SESSION_STATE_CHANGED)
    want = ((b"\xfe" if eof else b"\x00") + P.enc_lenenc_int(affected)
            + P.enc_lenenc_int(insert_id) + struct.pack("<HH", flags, warnings)
            + (P.enc_lenenc_str(info) + P.enc_lenenc_str(state) if state
               else P.enc_lenenc_str(info) if info else b""))
    assert P.make_ok(affected, insert_id, status, warnings, info, eof, state) == want


@given(st.integers(0, 2**64 - 1))
def test_lenenc_round_trip(n: int) -> None:
    assert P.lenenc_int(P.enc_lenenc_int(n), 0) == (n, len(P.enc_lenenc_int(n)))


@given(st.binary(max_size=300))
def test_handshake_check_never_hangs_or_crashes_unexpectedly(data: bytes) -> None:
    try:
        check_handshake_response(data, 0xFFFFFFFF)
    except ValueError:
        pass


@given(
    num_params=st.integers(0, 20),
    client_id=st.integers(0, 2**32 - 1),
    backend_id=st.integers(0, 2**32 - 1),
    flags=st.sampled_from([0, 0x08]),
    bound=st.booleans(),
    data=st.data(),
)
def test_rebind_execute_equals_split_then_join(num_params: int, client_id: int, backend_id: int,
                                               flags: int, bound: bool, data: st.DataObject) -> None:
    """The fast lane's three-slice rebinding builds exactly what the general path builds."""
    nb = (num_params + 7) // 8
    bitmap = data.draw(st.binary(min_size=nb, max_size=nb))
    types = data.draw(st.binary(min_size=2 * num_params, max_size=2 * num_params))
    values = data.draw(st.binary(max_size=40))
    body = struct.pack("<IB", client_id, flags) + b"\x01\x00\x00\x00"
    if num_params:
        body += bitmap + (b"\x01" + types if bound else b"\x00") + values
    payload = b"\x17" + body
    known = types if not bound else data.draw(st.sampled_from([b"", types]))
    got = P.rebind_execute(b"HDR!" + payload, 4, num_params, backend_id, known)
    parts = P.split_execute(payload, num_params)
    want_types = parts.types if parts.bound else known
    assert got == (P.join_execute(parts, backend_id, want_types), want_types)


def test_rebind_execute_declines_what_it_cannot_rebuild() -> None:
    two = struct.pack("<IB", 1, 0) + b"\x01\x00\x00\x00" + b"\x00" + b"\x00"  # unbound, 2 params
    assert P.rebind_execute(b"\x17" + two + b"x", 0, 2, 9, b"") is None  # no types known yet
    assert P.rebind_execute(b"\x17" + two[:5], 0, 2, 9, b"\x03\x00" * 2) is None  # truncated
    bound_short = struct.pack("<IB", 1, 0) + b"\x01\x00\x00\x00" + b"\x00" + b"\x01" + b"\x03"
    assert P.rebind_execute(b"\x17" + bound_short, 0, 2, 9, b"") is None


# ---- the compressed protocol's framing (compress.py) ------------------------------------

class _Sink:
    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return False


@settings(max_examples=300)
@given(writes=st.lists(st.one_of(st.binary(max_size=120), st.binary(min_size=200, max_size=3000),
                                 st.builds(lambda n: b"a" * n, st.integers(0, 100_000))),
                       max_size=8),
       cuts=st.lists(st.integers(0, 200_000), max_size=10))
def test_compressed_frames_carry_the_bytes_in_any_split(writes: list[bytes], cuts: list[int]) -> None:
    """What one side writes, the other side's `feed` gives back byte for byte, however the
    socket splits the frames; frame sequence ids run on from the peer's last frame."""
    from proxy.net.compress import Compression

    sink = _Sink()
    tx = Compression(sink)
    tx.seq = 7  # a reply numbers its frames on from the command's frame
    for w in writes:
        tx.write(w)
    stream = bytes(sink.out)
    rx = Compression(_Sink())
    got = bytearray()
    last = 0
    for cut in sorted({c % (len(stream) + 1) for c in cuts}) + [len(stream)]:
        got += rx.feed(stream[last:cut])
        last = cut
    assert bytes(got) == b"".join(writes)
    frames = sum(1 for w in writes if w)
    if frames:
        assert rx.seq == (7 + frames) & 0xFF  # the receiver answers on from the last frame
    assert tx.seq == (7 + frames) & 0xFF


def test_a_bad_compressed_frame_is_refused() -> None:
    import zlib

    from proxy.net.compress import Compression, CompressionError

    body = zlib.compress(b"x" * 1000)
    lying = len(body).to_bytes(3, "little") + b"\x00" + (10).to_bytes(3, "little") + body
    with pytest.raises(CompressionError):  # inflates past its announced length: no bomb
        Compression(_Sink()).feed(lying)
    garbage = (5).to_bytes(3, "little") + b"\x00" + (50).to_bytes(3, "little") + b"hello"
    with pytest.raises(CompressionError):
        Compression(_Sink()).feed(garbage)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=300), st.integers(0, 255)), max_size=12),
       st.data())
def test_take_packet_takes_each_whole_packet_as_sent(
        packets: list[tuple[bytes, int]], data: st.DataObject) -> None:
    """PacketIO.take_packet (a backend reply read without a coroutine when it came whole): the
    stream cut anywhere, fed piece by piece, gives back every payload and sequence id in order,
    and nothing of a packet not yet whole."""
    stream = b"".join(struct.pack("<I", len(p))[:3] + bytes((seq,)) + p for p, seq in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    io = PacketIO()
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        io.data_received(stream[a:b])
        while (pkt := io.take_packet()) is not None:
            got.append((pkt, io.taken_seq))
    assert got == packets
    assert not io.buf
