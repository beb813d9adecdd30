"""Bytes on the wire: the MySQL packet codec, the client socket's framing with TLS and
compression, and session-state tracking in OK packets. Imports nothing else of the proxy."""
