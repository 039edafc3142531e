"""``STORE=local``: JSON-lines files under ``STORE_PATH``, one file per UTC day.

The embedded default: nothing to install or run. Each chunk is appended with a single write.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

from service.stores.base import PredictionStore, RecordChunk


class LocalStore(PredictionStore):
    name: ClassVar[str] = "local"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    async def open(self) -> None:
        await asyncio.to_thread(self.path.mkdir, parents=True, exist_ok=True)

    def file_for(self, day: str) -> Path:
        return self.path / f"predictions-{day}.jsonl"

    def _append(self, chunk: RecordChunk) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with self.file_for(chunk.day).open("ab") as fh:
            fh.write(chunk.jsonl())
            fh.flush()

    async def write(self, chunk: RecordChunk) -> None:
        await asyncio.to_thread(self._append, chunk)

    def describe(self) -> str:
        return str(self.path)
