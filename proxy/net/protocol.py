"""MySQL wire-format helpers: pure functions over bytes, no I/O.

The proxy forwards result sets as raw packets (no row decoding) and only parses the packets it
must understand: OK (to carry affected rows, insert id, status and session-state tracking to
the client), EOF (status flags, more-results), ERR and the prepare-OK header.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

# Commands
COM_QUIT: Final = 0x01
COM_INIT_DB: Final = 0x02
COM_QUERY: Final = 0x03
COM_FIELD_LIST: Final = 0x04
COM_STATISTICS: Final = 0x09
COM_PROCESS_KILL: Final = 0x0C
COM_PING: Final = 0x0E
COM_CHANGE_USER: Final = 0x11
COM_STMT_PREPARE: Final = 0x16
COM_STMT_EXECUTE: Final = 0x17
COM_STMT_SEND_LONG_DATA: Final = 0x18
COM_STMT_CLOSE: Final = 0x19
COM_STMT_RESET: Final = 0x1A
COM_SET_OPTION: Final = 0x1B
COM_STMT_FETCH: Final = 0x1C
COM_STMT_BULK_EXECUTE: Final = 0xFA  # MariaDB: one prepared statement, many rows of parameters
STMT_COMMANDS: Final = frozenset({COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_STMT_SEND_LONG_DATA,
                           COM_STMT_CLOSE, COM_STMT_RESET, COM_STMT_FETCH, COM_STMT_BULK_EXECUTE})
BULK_SEND_TYPES: Final = 128  # its flag: parameter types precede the rows
STMT_LAST_PREPARED: Final = 0xFFFFFFFF  # MariaDB: a statement id meaning "the last one prepared"
COM_RESET_CONNECTION: Final = 0x1F

# Server status flags
SERVER_STATUS_IN_TRANS: Final = 0x0001
SERVER_STATUS_AUTOCOMMIT: Final = 0x0002
SERVER_MORE_RESULTS_EXISTS: Final = 0x0008
SERVER_STATUS_CURSOR_EXISTS: Final = 0x0040
CURSOR_TYPE_READ_ONLY: Final = 0x01  # COM_STMT_EXECUTE flags: open a cursor
SERVER_STATUS_NO_BACKSLASH_ESCAPES: Final = 0x0200
SERVER_STATUS_IN_TRANS_READONLY: Final = 0x2000
SERVER_SESSION_STATE_CHANGED: Final = 0x4000

# Capability flags (the ones the proxy reasons about)
CLIENT_MYSQL: Final = 1  # CLIENT_LONG_PASSWORD; a MariaDB server clears it to announce extended caps
CLIENT_FOUND_ROWS: Final = 1 << 1
CLIENT_COMPRESS: Final = 1 << 5
CLIENT_LOCAL_FILES: Final = 1 << 7
CLIENT_INTERACTIVE: Final = 1 << 10
CLIENT_MULTI_STATEMENTS: Final = 1 << 16
CLIENT_MULTI_RESULTS: Final = 1 << 17
CLIENT_PS_MULTI_RESULTS: Final = 1 << 18
CLIENT_SESSION_TRACK: Final = 1 << 23
CLIENT_DEPRECATE_EOF: Final = 1 << 24
# MariaDB's extended capabilities (bits 32-63, sent in the handshakes' reserved bytes)
MARIADB_CLIENT_STMT_BULK_OPERATIONS: Final = 1 << 34
MARIADB_CLIENT_EXTENDED_METADATA: Final = 1 << 35

# Session state tracker types
TRACK_SYSTEM_VARIABLES: Final = 0
TRACK_SCHEMA: Final = 1
TRACK_STATE_CHANGE: Final = 2
TRACK_GTIDS: Final = 3

MAX_PACKET: Final = 0xFFFFFF


def lenenc_int(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """Decode a length-encoded integer at pos; return (value, new_pos)."""
    b = buf[pos]
    if b < 0xFB:
        return b, pos + 1
    if b == 0xFC:
        return buf[pos + 1] | (buf[pos + 2] << 8), pos + 3
    if b == 0xFD:
        return buf[pos + 1] | (buf[pos + 2] << 8) | (buf[pos + 3] << 16), pos + 4
    if b == 0xFE:
        return struct.unpack_from("<Q", buf, pos + 1)[0], pos + 9
    raise ValueError(f"invalid length-encoded integer prefix 0x{b:02x}")


_ONE_BYTE: Final = [bytes((i,)) for i in range(0xFB)]  # made once: the common length-encoded ints
# Bound `pack`s as Final names: mypyc keeps them in C statics, where `struct.pack` or
# `Struct.pack` is an attribute lookup by name on every call (a few per statement).
_pack_ok_small: Final = struct.Struct("<BBBHH").pack  # an OK whose counts fit a byte, no strings
_pack_u32: Final = struct.Struct("<I").pack
_pack_u16x2: Final = struct.Struct("<HH").pack


def packet(payload: bytes, seq: int) -> bytes:
    """One wire packet: three bytes of length, the sequence id, the payload (at most
    MAX_PACKET bytes: a longer one is split by its sender, `BackendConn.send`)."""
    n = len(payload)
    if n > MAX_PACKET:
        raise ValueError(f"a packet of {n} bytes: more than one packet holds")
    return _pack_u32(n | (seq << 24)) + payload


def enc_lenenc_int(n: int) -> bytes:
    if 0 <= n < 0xFB:
        return _ONE_BYTE[n]
    if n < 1 << 16:  # (an INSERT's id in most OKs: bytes by hand, no `struct` lookup)
        return bytes((0xFC, n & 0xFF, n >> 8))
    if n < 1 << 24:
        return bytes((0xFD, n & 0xFF, (n >> 8) & 0xFF, n >> 16))
    return b"\xfe" + struct.pack("<Q", n)


def lenenc_str(buf: bytes | bytearray | memoryview, pos: int) -> tuple[bytes, int]:
    n, pos = lenenc_int(buf, pos)
    if pos + n > len(buf):
        raise ValueError("truncated length-encoded string")
    return bytes(buf[pos : pos + n]), pos + n


def enc_lenenc_str(s: bytes) -> bytes:
    return enc_lenenc_int(len(s)) + s


@dataclass(init=False)
class OkPacket:
    """A parsed OK packet, including what session-state tracking reported.

    Its `__init__` is written out: mypyc compiles it, where a dataclass's generated one runs
    interpreted (0.7 µs, for every OK of every statement)."""

    affected_rows: int
    last_insert_id: int
    status: int
    warnings: int
    info: bytes
    sysvars: dict[str, str]
    schema: str | None
    state_changed: bool
    gtid: str | None
    gtid_var: bool  # MariaDB reported it as the system variable last_gtid

    def __init__(self, affected_rows: int = 0, last_insert_id: int = 0, status: int = 0,
                 warnings: int = 0, info: bytes = b"", sysvars: dict[str, str] | None = None,
                 schema: str | None = None, state_changed: bool = False,
                 gtid: str | None = None, gtid_var: bool = False) -> None:
        self.affected_rows = affected_rows
        self.last_insert_id = last_insert_id
        self.status = status
        self.warnings = warnings
        self.info = info
        self.sysvars = {} if sysvars is None else sysvars
        self.schema = schema
        self.state_changed = state_changed
        self.gtid = gtid
        self.gtid_var = gtid_var


def parse_ok(payload: bytes, session_track: bool) -> OkPacket:
    """Parse an OK (0x00) or EOF-style OK (0xFE) packet from a server."""
    pos = 1
    affected, pos = lenenc_int(payload, pos)
    insert_id, pos = lenenc_int(payload, pos)
    if len(payload) < pos + 4:
        raise ValueError("truncated OK packet")
    status = payload[pos] | (payload[pos + 1] << 8)
    warnings = payload[pos + 2] | (payload[pos + 3] << 8)
    pos += 4
    ok = OkPacket(affected, insert_id, status, warnings)
    if not session_track:
        if pos < len(payload):
            ok.info, _ = lenenc_str(payload, pos)
        return ok
    if pos < len(payload):
        ok.info, pos = lenenc_str(payload, pos)
    if status & SERVER_SESSION_STATE_CHANGED and pos < len(payload):
        block, pos = lenenc_str(payload, pos)
        _parse_state(block, ok)
    return ok


def _parse_state(block: bytes, ok: OkPacket) -> None:
    p = 0
    while p < len(block):
        kind = block[p]
        data, p = lenenc_str(block, p + 1)
        if kind == TRACK_SYSTEM_VARIABLES:
            q = 0
            while q < len(data):
                name, q = lenenc_str(data, q)
                value, q = lenenc_str(data, q)
                ok.sysvars[name.decode().lower()] = value.decode("utf-8", "replace")
        elif kind == TRACK_SCHEMA:
            name, _ = lenenc_str(data, 0)
            ok.schema = name.decode("utf-8", "replace")
        elif kind == TRACK_STATE_CHANGE:
            ok.state_changed = True
        elif kind == TRACK_GTIDS:
            # MySQL: one byte encoding specification, then the GTID set.
            if len(data) > 1:
                gt, _ = lenenc_str(data, 1)
                ok.gtid = gt.decode()
    if "last_gtid" in ok.sysvars:
        ok.gtid = ok.sysvars.pop("last_gtid") or ok.gtid
        ok.gtid_var = True


def make_ok(
    affected_rows: int = 0,
    last_insert_id: int = 0,
    status: int = SERVER_STATUS_AUTOCOMMIT,
    warnings: int = 0,
    info: bytes = b"",
    eof_header: bool = False,
    state: bytes = b"",
) -> bytes:
    """An OK packet. `state`: a session-state block (tracking.py), only for a client that
    negotiated CLIENT_SESSION_TRACK; without one the packet suits every client.

    The info string is length-encoded, as MySQL's net_send_ok() writes it (and as libmariadb
    reads it) whatever the capability flags say.
    """
    if not state and not info and 0 <= affected_rows < 0xFB and 0 <= last_insert_id < 0xFB:
        return _pack_ok_small(0xFE if eof_header else 0, affected_rows, last_insert_id,
                              status & ~SERVER_SESSION_STATE_CHANGED, warnings)
    head = ((b"\xfe" if eof_header else b"\x00")
            + enc_lenenc_int(affected_rows) + enc_lenenc_int(last_insert_id))
    if state:
        return (head + _pack_u16x2(status | SERVER_SESSION_STATE_CHANGED, warnings)
                + enc_lenenc_str(info) + enc_lenenc_str(state))
    return (
        head
        + _pack_u16x2(status & ~SERVER_SESSION_STATE_CHANGED, warnings)
        + (enc_lenenc_str(info) if info else b"")
    )


def column_def(name: str) -> bytes:
    """A VAR_STRING utf8mb4 column definition (for result sets the proxy answers itself)."""
    n = name.encode()
    return (enc_lenenc_str(b"def") + b"\0\0\0" + enc_lenenc_str(n) + enc_lenenc_str(n)
            + b"\x0c" + struct.pack("<HIBHB", 45, 1024, 0xFD, 0, 0x27) + b"\0\0")


def _column_def_num(name: str, length: int, typ: int, flags: int) -> bytes:
    """An integer expression column (binary charset, no table, 0 decimals)."""
    n = name.encode()
    return (enc_lenenc_str(b"def") + b"\0\0\0" + enc_lenenc_str(n) + b"\0"
            + b"\x0c" + struct.pack("<HIBHB", 63, length, typ, flags, 0) + b"\0\0")


def column_def_uint(name: str, mariadb: bool = True) -> bytes:
    """An unsigned NOT NULL integer expression column, as the server gives CONNECTION_ID():
    INT(10) in MariaDB, BIGINT(21) in MySQL."""
    length, typ = (10, 0x03) if mariadb else (21, 0x08)
    return _column_def_num(name, length, typ, 0xA1)


def column_def_int(name: str) -> bytes:
    """A BIGINT NOT NULL expression column, as MariaDB gives ROW_COUNT()."""
    return _column_def_num(name, 21, 0x08, 0x81)


def column_def_count(name: str) -> bytes:
    """A BIGINT UNSIGNED column, as MariaDB gives @@warning_count and SHOW COUNT(*) WARNINGS."""
    return _column_def_num(name, 21, 0x08, 0xA0)


def coldef_names(coldef: bytes | bytearray) -> tuple[list[bytes], int]:
    """A column definition's six strings (catalog, schema, table, org_table, name, org_name)
    and where what follows them starts (MariaDB's extended metadata, or the 0x0c)."""
    pos = 0
    names = []
    for _ in range(6):
        name, pos = lenenc_str(coldef, pos)
        names.append(bytes(name))
    return names, pos


def coldef_ext(coldef: bytes) -> bytes:
    """The same column definition with MariaDB's extended metadata field (empty: no extended
    type), for a client that negotiated MARIADB_CLIENT_EXTENDED_METADATA."""
    _, pos = coldef_names(coldef)
    return coldef[:pos] + b"\0" + coldef[pos:]


def greeting_ext(greeting: bytes, ext_caps: int) -> bytes:
    """mysql-mimic's HandshakeV10 as a MariaDB server sends it: CLIENT_MYSQL cleared and the
    extended capabilities (bits 32-63) in the last 4 of the 10 reserved bytes."""
    pos = greeting.index(b"\0", 1) + 1 + 4 + 9  # version, connection id, scramble part 1
    out = bytearray(greeting)
    out[pos] &= ~CLIENT_MYSQL & 0xFF
    reserved = pos + 2 + 1 + 2 + 2 + 1  # caps low, charset, status, caps high, scramble len
    out[reserved + 6:reserved + 10] = struct.pack("<I", ext_caps >> 32)
    return bytes(out)


def client_ext_caps(response: bytes) -> int:
    """The extended capabilities of a HandshakeResponse41 sent to a MariaDB-style greeting
    (the last 4 of its 23 reserved bytes; only a client that cleared CLIENT_MYSQL sends them)."""
    if len(response) < 32 or response[0] & CLIENT_MYSQL:
        return 0
    return int.from_bytes(response[28:32], "little") << 32


def binary_row(coldefs: list[bytes], values: list[str | None]) -> bytes:
    """A binary-protocol result row (COM_STMT_EXECUTE) for column definitions the proxy built
    (`column_def*`: integers and strings)."""
    bitmap = bytearray((len(values) + 7 + 2) // 8)
    out = bytearray()
    for i, (d, v) in enumerate(zip(coldefs, values, strict=True)):
        if v is None:
            bitmap[(i + 2) // 8] |= 1 << ((i + 2) % 8)
            continue
        _, pos = coldef_names(d)
        typ, flags = d[pos + 7], struct.unpack_from("<H", d, pos + 8)[0]
        unsigned = bool(flags & 0x20)
        if typ == 0x03:
            out += struct.pack("<I" if unsigned else "<i", int(v))
        elif typ == 0x08:
            out += struct.pack("<Q" if unsigned else "<q", int(v))
        else:
            out += enc_lenenc_str(v.encode())
    return b"\0" + bytes(bitmap) + bytes(out)


def text_row(values: list[str | None]) -> bytes:
    return b"".join(b"\xfb" if v is None else enc_lenenc_str(v.encode()) for v in values)


def make_eof(status: int, warnings: int = 0) -> bytes:
    return b"\xfe" + struct.pack("<HH", warnings, status)


def make_err(code: int, sqlstate: str, message: str) -> bytes:
    return (
        b"\xff"
        + struct.pack("<H", code)
        + b"#"
        + sqlstate.encode()[:5].ljust(5, b"0")
        + message.encode("utf-8", "replace")
    )


@dataclass(frozen=True)
class ErrPacket:
    code: int
    sqlstate: str
    message: str


def parse_err(payload: bytes) -> ErrPacket:
    code = struct.unpack_from("<H", payload, 1)[0]
    if len(payload) > 3 and payload[3:4] == b"#":
        return ErrPacket(code, payload[4:9].decode(), payload[9:].decode("utf-8", "replace"))
    return ErrPacket(code, "HY000", payload[3:].decode("utf-8", "replace"))


def is_eof(payload: bytes | bytearray | memoryview) -> bool:
    return len(payload) < 9 and payload[0] == 0xFE


def eof_status(payload: bytes | bytearray | memoryview) -> int:
    return int(payload[3] | (payload[4] << 8)) if len(payload) >= 5 else 0


@dataclass(frozen=True)
class PrepareOk:
    stmt_id: int
    num_columns: int
    num_params: int
    warnings: int


def parse_prepare_ok(payload: bytes) -> PrepareOk:
    stmt_id, ncols, nparams = struct.unpack_from("<IHH", payload, 1)
    warnings = struct.unpack_from("<H", payload, 10)[0] if len(payload) >= 12 else 0
    return PrepareOk(stmt_id, ncols, nparams, warnings)


def with_stmt_id(payload: bytes, stmt_id: int) -> bytes:
    """Replace the 4-byte statement id that follows the first byte (command or 0x00 status)."""
    return payload[:1] + _pack_u32(stmt_id) + payload[5:]


@dataclass(init=False)
class ExecuteParts:
    """COM_STMT_EXECUTE split so params can be re-bound on another backend connection. Its
    `__init__` is written out (compiled, see OkPacket): one per prepared statement executed."""

    stmt_id: int
    flags: int
    iterations: bytes
    null_bitmap: bytes
    bound: bool
    types: bytes
    values: bytes

    def __init__(self, stmt_id: int, flags: int, iterations: bytes, null_bitmap: bytes,
                 bound: bool, types: bytes, values: bytes) -> None:
        self.stmt_id = stmt_id
        self.flags = flags
        self.iterations = iterations
        self.null_bitmap = null_bitmap
        self.bound = bound
        self.types = types
        self.values = values


def split_execute(payload: bytes, num_params: int) -> ExecuteParts:
    """Split a COM_STMT_EXECUTE payload (command byte included)."""
    if len(payload) < 10:
        raise ValueError("COM_STMT_EXECUTE too short")
    stmt_id, flags = struct.unpack_from("<IB", payload, 1)
    iterations = payload[6:10]
    if num_params == 0:
        return ExecuteParts(stmt_id, flags, iterations, b"", False, b"", b"")
    nb = (num_params + 7) // 8
    pos = 10
    if len(payload) < pos + nb + 1:
        raise ValueError("COM_STMT_EXECUTE truncated")
    null_bitmap = payload[pos : pos + nb]
    pos += nb
    bound = payload[pos] == 1
    pos += 1
    types = b""
    if bound:
        types = payload[pos : pos + 2 * num_params]
        if len(types) != 2 * num_params:
            raise ValueError("COM_STMT_EXECUTE truncated parameter types")
        pos += 2 * num_params
    return ExecuteParts(stmt_id, flags, iterations, null_bitmap, bound, types, payload[pos:])


def join_execute(p: ExecuteParts, stmt_id: int, types: bytes) -> bytes:
    """Rebuild COM_STMT_EXECUTE for a backend statement id, always sending parameter types."""
    head = bytes((COM_STMT_EXECUTE,)) + struct.pack("<IB", stmt_id, p.flags) + p.iterations
    if not types and not p.null_bitmap:
        return head
    return head + p.null_bitmap + b"\x01" + types + p.values


def rebind_execute(payload: bytes, start: int, num_params: int, stmt_id: int,
                   types: bytes) -> tuple[bytes, bytes] | None:
    """`join_execute(split_execute(...))` in three slices, for the fast lane: the command at
    payload[start:] for backend statement `stmt_id`, with the parameter types it carries or
    else `types`; returns (command, types) or None where the careful path must decide."""
    n = len(payload)
    head = b"\x17" + _pack_u32(stmt_id)
    if n < start + 10:
        return None
    if num_params == 0:
        return head + payload[start + 5 : start + 10], types
    pos = start + 10 + (num_params + 7) // 8
    if n <= pos:
        return None
    if payload[pos] == 1:
        end = pos + 1 + 2 * num_params
        if n < end:
            return None
        return head + payload[start + 5 :], payload[pos + 1 : end]
    if payload[pos] == 0 and len(types) == 2 * num_params:
        return head + payload[start + 5 : pos] + b"\x01" + types + payload[pos + 1 :], types
    return None


def decode_binary_params(p: ExecuteParts, types: bytes, num_params: int) -> list[object]:
    """Decode bound parameter values (for hot-row recognition of prepared statements).

    Only the integer, decimal and string types are decoded; anything else raises ValueError so
    the statement takes the normal path.
    """
    out: list[object] = []
    pos = 0
    v = p.values
    for i in range(num_params):
        if p.null_bitmap[i // 8] & (1 << (i % 8)):
            out.append(None)
            continue
        t = types[2 * i]
        unsigned = bool(types[2 * i + 1] & 0x80)
        if t == 1:  # TINY
            out.append(struct.unpack_from("<B" if unsigned else "<b", v, pos)[0])
            pos += 1
        elif t in (2, 13):  # SHORT, YEAR
            out.append(struct.unpack_from("<H" if unsigned else "<h", v, pos)[0])
            pos += 2
        elif t in (3, 9):  # LONG, INT24
            out.append(struct.unpack_from("<I" if unsigned else "<i", v, pos)[0])
            pos += 4
        elif t == 8:  # LONGLONG
            out.append(struct.unpack_from("<Q" if unsigned else "<q", v, pos)[0])
            pos += 8
        elif t in (0, 246, 15, 253, 254, 249, 250, 251, 252):  # decimal/strings/blobs
            s, pos = lenenc_str(v, pos)
            out.append(s.decode("utf-8", "replace"))
        else:
            raise ValueError(f"parameter type {t} not decoded")
    return out
