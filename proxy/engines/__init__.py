"""What the proxy adds to MySQL: the hot-row engine (recognised decrements queued or merged,
with the escrow's reservations), the read split (GTID waits), durability (replica acks, the
primary's settings), commit outcomes and the backend monitor. Engines reach the rest through
the Protocols in `ports`, never the session or the server."""
