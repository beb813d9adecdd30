"""Session-state tracking as each client asked for it (CLIENT_SESSION_TRACK), pure.

Backend connections always track everything (`session_track_system_variables='*'`, schema and
state change: backend.py), because that is how the proxy learns what a client's statement
changed. A client that negotiated CLIENT_SESSION_TRACK expects its OK packets to carry only what
*its* `session_track_*` settings ask for: MariaDB's defaults (the server's globals) until it
changes them. So the proxy filters what the backend reported through the client's settings and
encodes it as MariaDB does: one entry per variable, then the schema, then the state-change flag.
Drivers read it: libmariadb keeps `mysql->db` and its character set from it (MariaDB
Connector/Python's `connection.database`, the `mariadb` CLI), Connector/J its schema.

Not relayed: `session_track_transaction_info` (the backend does not track it) and MySQL's
`session_track_gtids` (the proxy's own GTID tracking), see README.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from proxy.net import protocol as P

# MariaDB 10.11's defaults (used until the primary's globals are read at start)
DEFAULT_SYSVARS: Final = "autocommit,character_set_client,character_set_connection,character_set_results,time_zone"
VARS: Final = ("session_track_schema", "session_track_state_change", "session_track_system_variables")


def _on(v: str | None) -> bool:
    return (v or "").strip().upper() in ("ON", "1", "TRUE")


def _names(sysvars: str | None) -> frozenset[str] | None:
    """A session_track_system_variables value: its variable names, None for '*'."""
    names = {n.strip().lower() for n in (sysvars or "").split(",") if n.strip()}
    return None if "*" in names else frozenset(names)


@dataclass(frozen=True)
class Tracking:
    """A client's `session_track_schema`, `_state_change` and `_system_variables`."""

    schema: bool = True
    state_change: bool = False
    sysvars: frozenset[str] | None = frozenset(DEFAULT_SYSVARS.split(","))  # None: '*'

    @classmethod
    def parse(cls, schema: str | None, state_change: str | None, sysvars: str | None) -> Tracking:
        return cls(_on(schema), _on(state_change), _names(sysvars))

    def updated(self, reported: dict[str, str]) -> Tracking:
        """These settings after a statement that changed some of them (as the backend, which
        tracks every variable, reported them)."""
        schema, state, sysvars = (reported.get(v) for v in VARS)
        if schema is None and state is None and sysvars is None:
            return self
        return Tracking(self.schema if schema is None else _on(schema),
                        self.state_change if state is None else _on(state),
                        self.sysvars if sysvars is None else _names(sysvars))

    def from_backend(self, schema: str | None, state_change: str | None,
                     sysvars: str | None) -> Tracking:
        """After a client's SET of session_track_*, what the backend connection now has: it had
        the proxy's (ON, ON, '*'), so a value that differs is the client's. (A change the
        backend reported in the OK was taken by `updated` already; one it did not report,
        because the client's new variable list left it out, shows here.)"""
        names = _names(sysvars) if sysvars is not None else None
        return Tracking(self.schema and _on(schema), self.state_change and _on(state_change),
                        self.sysvars if names is None else names)

    def tracks(self, name: str) -> bool:
        return self.sysvars is None or name in self.sysvars

    def block(self, sysvars: Iterable[tuple[str, str]], schema: str | None,
              state_changed: bool) -> bytes:
        """The session-state block of an OK packet (b"": nothing this client tracks changed)."""
        out = bytearray()
        for name, value in sysvars:
            if self.tracks(name):
                data = P.enc_lenenc_str(name.encode()) + P.enc_lenenc_str(value.encode())
                out += bytes((P.TRACK_SYSTEM_VARIABLES,)) + P.enc_lenenc_str(data)
        if schema is not None and self.schema:
            out += bytes((P.TRACK_SCHEMA,)) + P.enc_lenenc_str(P.enc_lenenc_str(schema.encode()))
        if state_changed and self.state_change:
            out += bytes((P.TRACK_STATE_CHANGE,)) + P.enc_lenenc_str(b"1")
        return bytes(out)

    def of_ok(self, ok: P.OkPacket) -> bytes:
        """What a backend OK reported, as this client tracks it."""
        if not ok.status & P.SERVER_SESSION_STATE_CHANGED:
            return b""
        items: list[tuple[str, str]] = list(ok.sysvars.items())
        if ok.gtid_var and ok.gtid is not None:
            items.append(("last_gtid", ok.gtid))
        return self.block(items, ok.schema, ok.state_changed)


def login_ok(ok: bytes, track: Tracking | None, database: str | None) -> bytes:
    """The login OK as MariaDB sends it to a client that tracks its schema: with the database
    it connected to."""
    if track is None or not database or not track.schema or ok[:1] != b"\x00":
        return ok
    o = P.parse_ok(ok, False)
    return P.make_ok(o.affected_rows, o.last_insert_id, o.status, o.warnings, o.info,
                     state=track.block((), database, False))
