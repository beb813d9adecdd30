"""Defensive checks of the client packets mysql-mimic parses (the handshake response and
COM_CHANGE_USER), before they reach it.

mysql-mimic's compiled parsers read NUL-terminated strings with no end-of-buffer check, so a
packet without the terminator would spin the event loop forever. Every client packet they
parse is checked here first, with bounds, and rejected (ValueError) if malformed.
"""

from __future__ import annotations

from proxy.net.protocol import lenenc_int, lenenc_str

CLIENT_CONNECT_WITH_DB = 1 << 3
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_CONNECT_ATTRS = 1 << 20
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21


def _cstr_end(data: bytes | bytearray, pos: int, what: str) -> int:
    end = data.find(b"\0", pos)
    if end < 0:
        raise ValueError(f"{what} is not NUL-terminated")
    return end + 1


def _check_attrs(data: bytes | bytearray, pos: int) -> None:
    try:
        total, pos = lenenc_int(data, pos)
        end = pos + total
        if end > len(data):
            raise ValueError("connect attributes truncated")
        while pos < end:
            _, pos = lenenc_str(data, pos)
            _, pos = lenenc_str(data, pos)
        if pos != end:
            raise ValueError("connect attributes malformed")
    except IndexError:
        raise ValueError("connect attributes truncated") from None


def check_handshake_response(data: bytes, server_caps: int) -> bytes:
    """Validate a HandshakeResponse41; trailing optional fields a client omitted are filled in
    (empty database, plugin, attributes) so the parser sees a complete packet."""
    if len(data) < 32:
        raise ValueError("handshake response too short")
    caps = int.from_bytes(data[:4], "little") & server_caps
    if not caps & CLIENT_PROTOCOL_41:
        raise ValueError("client does not speak protocol 4.1")
    if len(data) == 32:
        return data  # SSLRequest: TLS starts, the full response follows (tls.py)
    out = bytearray(data)
    pos = _cstr_end(out, 32, "user name")
    try:
        if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
            n, pos = lenenc_int(out, pos)
        else:
            n, pos = out[pos], pos + 1
    except IndexError:
        raise ValueError("auth response missing") from None
    pos += n
    if pos > len(out):
        raise ValueError("auth response truncated")
    for flag, what in ((CLIENT_CONNECT_WITH_DB, "database"), (CLIENT_PLUGIN_AUTH, "plugin name")):
        if caps & flag:
            if pos >= len(out):
                out += b"\0"
                pos = len(out)
            else:
                pos = _cstr_end(out, pos, what)
    if caps & CLIENT_CONNECT_ATTRS:
        if pos >= len(out):
            out += b"\0"
        else:
            _check_attrs(out, pos)
    return bytes(out)


def check_change_user(data: bytes, caps: int) -> None:
    """Validate COM_CHANGE_USER (without its command byte) the way mimic will read it."""
    pos = _cstr_end(data, 0, "user name")
    if caps & CLIENT_SECURE_CONNECTION:
        if pos >= len(data):
            raise ValueError("auth response missing")
        pos += 1 + data[pos]
        if pos > len(data):
            raise ValueError("auth response truncated")
    else:
        pos = _cstr_end(data, pos, "auth response")
    pos = _cstr_end(data, pos, "database")
    if pos < len(data):
        if caps & CLIENT_PROTOCOL_41:
            pos += 2
            if pos > len(data):
                raise ValueError("charset truncated")
        if caps & CLIENT_PLUGIN_AUTH:
            pos = _cstr_end(data, pos, "plugin name")
        if caps & CLIENT_CONNECT_ATTRS and pos < len(data):
            _check_attrs(data, pos)
