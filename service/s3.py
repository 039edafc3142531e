"""Object Storage (S3 API) helpers shared by the model loader and the ``s3`` prediction store.

boto3/botocore are imported lazily: a service that reads its model from disk and logs predictions
locally never pays for them at start-up.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

DEFAULT_S3_ENDPOINT = "https://storage.yandexcloud.net"
DEFAULT_REGION = "ru-central1"
DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_READ_TIMEOUT = 10.0


@dataclass(frozen=True)
class S3Params:
    """Where and how to reach Object Storage (``S3_ENDPOINT_URL``, ``AWS_REGION``, timeouts)."""

    endpoint_url: str = DEFAULT_S3_ENDPOINT
    region: str = DEFAULT_REGION
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Params:
        """The same variables as ``service.settings.Settings``, read without pydantic (used by the
        prefetch helper, which must start fast)."""
        env = os.environ if environ is None else environ
        return cls(
            endpoint_url=env.get("S3_ENDPOINT_URL") or DEFAULT_S3_ENDPOINT,
            region=env.get("AWS_REGION") or DEFAULT_REGION,
            connect_timeout=float(env.get("S3_CONNECT_TIMEOUT") or DEFAULT_CONNECT_TIMEOUT),
            read_timeout=float(env.get("S3_READ_TIMEOUT") or DEFAULT_READ_TIMEOUT),
        )


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri}")
    return parsed.netloc, parsed.path.lstrip("/")


@functools.lru_cache(maxsize=8)
def make_s3_client(params: S3Params) -> Any:
    """An S3 client for ``S3_ENDPOINT_URL`` / ``AWS_REGION`` with short timeouts (one per parameter
    set and process; the clients are thread-safe).

    It is the client ``boto3.client("s3")`` returns, made from boto3's botocore session directly:
    importing boto3's resource layer would add about 0.1 s to the cold start of a service that
    reads its model from Object Storage. Credentials come from the standard chain
    (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, which the stack fills from a Lockbox secret).
    """
    from botocore.config import Config  # type: ignore[import-untyped]

    config = Config(
        region_name=params.region,
        connect_timeout=params.connect_timeout,
        read_timeout=params.read_timeout,
        retries={"max_attempts": 2, "mode": "standard"},
        s3={"addressing_style": "path"},
    )
    return _fast_botocore_session().create_client("s3", endpoint_url=params.endpoint_url, config=config)


def _fast_botocore_session() -> Any:
    """A botocore session whose data loader parses botocore's JSON models with orjson and does not
    scan the ~400 bundled service directories: together about two thirds of the time a new S3
    client takes, which is on the service's cold-start path. Both hooks are botocore's public
    extension points (the ``data_loader`` component and ``Loader(file_loader=...)``); any surprise
    falls back to the stock session."""
    import botocore.session  # type: ignore[import-untyped]

    session = botocore.session.get_session()
    try:
        import gzip

        import orjson
        from botocore import loaders

        class OrjsonFileLoader(loaders.JSONFileLoader):
            def load_file(self, file_path: str) -> Any:
                for ext, opener in ((".json", open), (".json.gz", gzip.open)):
                    full = file_path + ext
                    if os.path.isfile(full):
                        with opener(full, "rb") as fp:
                            return orjson.loads(fp.read())
                return None

        class S3Loader(loaders.Loader):
            def list_available_services(self, type_name: str) -> list[str]:
                # this session only ever creates S3 clients
                present = any(os.path.isdir(os.path.join(p, "s3")) for p in self.search_paths)
                return ["s3"] if present else []

        session.register_component("data_loader", S3Loader(file_loader=OrjsonFileLoader()))
    except Exception:  # an incompatible botocore: keep its own loader
        session = botocore.session.get_session()
    return session


def describe_s3_error(exc: BaseException) -> tuple[bool, str]:
    """``(missing, reason)`` for an exception raised by a boto3 call."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", "")) or code
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        missing = code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound")
        return missing, f"{code or 'error'} (HTTP {status}): {message}"
    return False, f"{type(exc).__name__}: {exc}"
