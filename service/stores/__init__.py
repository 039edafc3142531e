"""Prediction stores, selected by ``STORE``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.stores.base import PredictionStore, RecordChunk, StoreError

if TYPE_CHECKING:
    from service.settings import Settings

__all__ = ["PredictionStore", "RecordChunk", "StoreError", "create_store"]


def create_store(settings: Settings) -> PredictionStore:
    """The store named by ``STORE`` (``local`` or ``s3``; ``postgres``/``clickhouse`` plug in here)."""
    if settings.store == "local":
        from service.stores.local import LocalStore

        return LocalStore(settings.store_path)
    if settings.store == "s3":
        from service.stores.s3 import S3Store

        return S3Store(settings)
    if settings.store == "postgres":
        from service.stores.postgres import PostgresStore

        return PostgresStore.from_settings(settings)
    if settings.store == "clickhouse":
        from service.stores.clickhouse import ClickhouseStore

        return ClickhouseStore.from_settings(settings)
    raise ValueError(f"unknown STORE {settings.store!r}; available: local, s3")
