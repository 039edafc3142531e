"""Pieces every stage program builds the same way."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pulumi

from components.storage import ModelStoreArgs
from stacks.config import MvpConfig, PartnerConfig, ProdConfig


def model_store_args(cfg: MvpConfig | PartnerConfig | ProdConfig, model_dir: Path, *,
                     readers: Sequence[pulumi.Input[str]] = (),
                     writers: Sequence[pulumi.Input[str]] = (),
                     saved_model_dir: Path | None = None) -> ModelStoreArgs:
    """The stage bucket's arguments from ``aistack:storage`` and the release pins."""
    st = cfg.storage
    return ModelStoreArgs(
        folder_id=cfg.folder_id,
        bucket_name=cfg.bucket_name,
        model_name=cfg.model.name,
        model_sha256=cfg.release.model_sha256,
        model_dir=str(model_dir),
        model_prefix=st.model_prefix,
        log_prefix=st.log_prefix,
        log_retention_days=st.log_retention_days,
        log_cold_after_days=st.log_cold_after_days,
        noncurrent_version_days=st.noncurrent_version_days,
        max_size_gb=st.max_size_gb,
        force_destroy=st.force_destroy,
        kms_deletion_protection=st.kms_deletion_protection,
        readers=list(readers),
        writers=list(writers),
        saved_model_dir=str(saved_model_dir) if saved_model_dir is not None else None,
    )
