"""The session's two attributes that are properties with setters, in a class of their own.

session.py and hold.py are compiled with mypyc as ordinary classes (compiled.py), and mypyc
compiles no property setter in an ordinary class: these stay interpreted, the rest compiled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.backends.backend import BackendConn
    from proxy.core.state import Answered, Carried


class Settable:
    _database: str | None
    _stmt_conn: BackendConn | Answered | Carried | None

    @property
    def database(self) -> str | None:
        return self._database

    @database.setter
    def database(self, name: str | None) -> None:
        """'' is no database: what mysql-mimic leaves after a handshake or COM_CHANGE_USER
        without one (mysql-connector-python sends CLIENT_CONNECT_WITH_DB and an empty name),
        and what session tracking reports after the database is dropped."""
        self._database = name or None

    @property
    def stmt_conn(self) -> BackendConn | Answered | Carried | None:
        """Where the session's diagnostics area is: the connection that ran its last
        statement, Answered, or Carried."""
        return self._stmt_conn

    @stmt_conn.setter
    def stmt_conn(self, c: BackendConn | Answered | Carried | None) -> None:
        self.diag_moved(c)

    def diag_moved(self, c: BackendConn | Answered | Carried | None) -> None:
        raise NotImplementedError
