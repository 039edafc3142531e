"""``STORE=s3``: batched JSON-lines objects in Object Storage.

Each chunk becomes one object ``<prefix>dt=YYYY-MM-DD/<chunk id>.jsonl``. The key is the chunk's
stable id, so replaying a chunk after an outage overwrites rather than duplicates it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from service.s3 import describe_s3_error, make_s3_client, split_s3_uri
from service.stores.base import PredictionStore, RecordChunk, StoreError
from service.threads import DaemonExecutor

if TYPE_CHECKING:
    from service.settings import Settings


class S3Store(PredictionStore):
    name: ClassVar[str] = "s3"

    def __init__(self, settings: Settings) -> None:
        assert settings.store_s3_uri is not None
        self.bucket, prefix = split_s3_uri(settings.store_s3_uri)
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self._settings = settings
        self._client: Any = None
        # own daemon threads: a PUT stuck on a server that never answers must not hold the
        # process at exit (the prediction log bounds each call with STORE_TIMEOUT_SECONDS)
        self._io = DaemonExecutor(4, "store-s3")

    def _get_client(self) -> Any:
        if self._client is None:
            self._client = make_s3_client(self._settings.s3)
        return self._client

    async def open(self) -> None:
        await self._io.run(self._get_client)

    def key_for(self, chunk: RecordChunk) -> str:
        return f"{self.prefix}dt={chunk.day}/{chunk.id}.jsonl"

    def _put(self, chunk: RecordChunk) -> None:
        try:
            self._get_client().put_object(
                Bucket=self.bucket,
                Key=self.key_for(chunk),
                Body=chunk.jsonl(),
                ContentType="application/x-ndjson",
            )
        except Exception as exc:  # boto3/botocore raise many exception types
            raise StoreError(f"s3://{self.bucket}/{self.key_for(chunk)}: {describe_s3_error(exc)[1]}") from exc

    async def write(self, chunk: RecordChunk) -> None:
        await self._io.run(self._put, chunk)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"
