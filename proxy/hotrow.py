"""placeholder"""
from __future__ import annotations
from typing import Any


class HotRowEngine:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def apply_config(self, cfg: Any) -> None: ...
    async def intercept(self, *a: Any) -> None:
        return None
    async def intercept_execute(self, *a: Any) -> None:
        return None
