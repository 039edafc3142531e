"""The prediction store seam.

The service hands a store chunks of prediction records (already batched by
``service.prediction_log.PredictionLog``); a store writes one chunk or raises. ``local`` (files) and
``s3`` (Object Storage) exist now; PostgreSQL and ClickHouse stores implement the same three
coroutines. Chunk ids are unique and stable (a replayed chunk keeps its id), so a store can make
writes idempotent, as the ``s3`` store does by using the id as the object key.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson


@dataclass
class RecordChunk:
    """A batch of prediction records with a stable id (``<UTC time>-<instance>-<seq>``).

    The records are held as JSON lines (one object per line, what the file and Object Storage
    stores write and what the spool keeps); :meth:`records` parses them for stores that insert
    rows (PostgreSQL, ClickHouse).
    """

    id: str
    data: bytes
    count: int

    def __len__(self) -> int:
        return self.count

    @property
    def day(self) -> str:
        """``YYYY-MM-DD`` of the chunk's creation, from its id."""
        return f"{self.id[0:4]}-{self.id[4:6]}-{self.id[6:8]}"

    def jsonl(self) -> bytes:
        return self.data

    def records(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.data.splitlines() if line.strip()]

    @classmethod
    def from_jsonl(cls, chunk_id: str, data: bytes) -> RecordChunk:
        if data and not data.endswith(b"\n"):
            data += b"\n"
        return cls(chunk_id, data, sum(1 for line in data.splitlines() if line.strip()))


class StoreError(Exception):
    """A write failed; the caller spills the chunk and retries later."""


class PredictionStore(abc.ABC):
    name: ClassVar[str]

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect / create what is needed. May raise; the service then starts with the store down."""

    @abc.abstractmethod
    async def write(self, chunk: RecordChunk) -> None:
        """Write every record of ``chunk`` durably or raise."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where records go, for logs."""
