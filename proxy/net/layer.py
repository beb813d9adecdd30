"""A layer under the client connection (TLS in tls.py, compression in compress.py): it stands
in for the socket's transport, with the subset of the transport API the proxy uses, and passes
to the transport below whatever it does not change."""

from __future__ import annotations

from typing import Any


class LayerTransport:
    def __init__(self, raw: Any) -> None:
        self.raw = raw  # the transport below: the socket's, or another layer

    def write(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def is_closing(self) -> bool:
        return bool(self.raw.is_closing())

    def close(self) -> None:
        self.raw.close()

    def abort(self) -> None:
        self.raw.abort()

    def pause_reading(self) -> None:
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        self.raw.resume_reading()

    def get_write_buffer_size(self) -> int:
        return int(self.raw.get_write_buffer_size())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.raw.get_extra_info(name, default)
