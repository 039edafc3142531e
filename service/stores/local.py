"""``STORE=local``: JSON-lines files under ``STORE_PATH``, one file per UTC day.

The embedded default: nothing to install or run. Each chunk is appended with a single write.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from service.stores.base import PredictionStore, RecordChunk
from service.threads import DaemonExecutor


class LocalStore(PredictionStore):
    name: ClassVar[str] = "local"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._io = DaemonExecutor(1, "store-local")  # one writer: chunks are appended whole, in order

    async def open(self) -> None:
        await self._io.run(lambda: self.path.mkdir(parents=True, exist_ok=True))

    def file_for(self, day: str) -> Path:
        return self.path / f"predictions-{day}.jsonl"

    def _append(self, chunk: RecordChunk) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with self.file_for(chunk.day).open("ab") as fh:
            fh.write(chunk.jsonl())
            fh.flush()

    async def write(self, chunk: RecordChunk) -> None:
        await self._io.run(self._append, chunk)

    def describe(self) -> str:
        return str(self.path)
