"""How the proxy reaches MySQL: one `Dial` per process (server.App.dial), handed to the pools,
the monitor, the outcome tracker and the hot-row engine's service connections.

It carries what every new backend connection needs and that the process learns or changes at
run time: the TLS context toward MySQL (`backends.tls`, replaced on RELOAD CONFIG: new
connections use it, open ones keep theirs) and the servers' collation catalog (read from the
primary at start, backends/catalog.py). Before, both were class attributes of `BackendConn`
that the server set and four modules read.
"""

from __future__ import annotations

import ssl as ssl_mod
from dataclasses import dataclass, field

from proxy.backends.backend import BackendConn
from proxy.core.config import Address
from proxy.core.state import Catalog


@dataclass
class Dial:
    ssl: ssl_mod.SSLContext | None = None  # TLS to MySQL over TCP; None: plain
    catalog: Catalog = field(default_factory=Catalog.builtin)

    async def connect(self, addr: Address, user: str, password: str, timeout: float,
                      caps: int = 0) -> BackendConn:
        """A new logged-in backend connection (BackendConn.connect with this dial's parts)."""
        return await BackendConn.connect(addr, user, password, timeout, caps,
                                         ssl=self.ssl, catalog=self.catalog)
