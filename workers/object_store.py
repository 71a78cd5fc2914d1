"""An S3-compatible object store for images (AWS S3, MinIO, Alibaba OSS, ...), with boto3.

With ``ZIMG_STORAGE=s3`` (or a job's ``options.storage = "s3"``) every file a job writes
is also put in one bucket under the same content-addressed name
(``<prefix><sha256>.<ext>``), so workers on several GPU hosts share one store: a host
that finds the object already there downloads it instead of running inference, and an
upload of a key that exists is skipped. The local folder stays a write-through cache.

Settings (environment): ``ZIMG_S3_BUCKET`` (required), ``ZIMG_S3_ENDPOINT_URL`` (MinIO,
OSS; unset for AWS), ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (boto3's usual
chain), ``ZIMG_S3_REGION``, ``ZIMG_S3_PREFIX`` (default ``images/``),
``ZIMG_S3_ADDRESSING_STYLE`` (``path`` for MinIO, ``virtual`` for OSS) and
``ZIMG_S3_PUBLIC_URL`` (a public bucket's base URL; without it, URLs are presigned for
``ZIMG_S3_URL_EXPIRES`` seconds, default 7 days).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from zimg_queue.settings import Settings

from .storage import EXTENSIONS, ImageStore

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_OBJECT_NAME = re.compile(r"^[0-9a-f]{64}\.(" + "|".join(EXTENSIONS.values()) + r")$")


class ObjectStore:
    """Content-addressed images in one bucket. Keys are SHA-256 hex digests, never user input."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        prefix: str = "images/",
        public_url: str | None = None,
        url_expires: int = 7 * 86_400,
        addressing_style: str = "auto",
        client: Any = None,
    ):
        self.bucket = bucket
        self.prefix = prefix
        self.public_url = public_url.rstrip("/") if public_url else None
        self.url_expires = url_expires
        config = Config(signature_version="s3v4", s3={"addressing_style": addressing_style},
                        retries={"max_attempts": 5, "mode": "standard"})  # fmt: skip
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ObjectStore:
        """From ``Settings`` (``ZIMG_S3_*``); ``env`` replaces the environment (tests)."""
        s = Settings() if env is None else Settings.from_env(env)
        aws_region = os.environ.get("AWS_REGION") if env is None else env.get("AWS_REGION")
        return cls.from_settings(s, aws_region=aws_region)

    @classmethod
    def from_settings(cls, s: Settings, *, aws_region: str | None = None) -> ObjectStore:
        """From given ``Settings`` (a web app's ``app.config`` ones, say); credentials come from boto3's chain."""
        if not s.s3_bucket:
            raise RuntimeError("ZIMG_STORAGE=s3 needs ZIMG_S3_BUCKET")
        aws_region = aws_region or os.environ.get("AWS_REGION")
        return cls(
            s.s3_bucket,
            endpoint_url=s.s3_endpoint_url,
            region=s.s3_region or aws_region or "us-east-1",
            prefix=s.s3_prefix,
            public_url=s.s3_public_url,
            url_expires=s.s3_url_expires,
            addressing_style=s.s3_addressing_style,
        )

    def object_key(self, key: str, fmt: str) -> str:
        ImageStore("/").path_for(key, fmt)  # the same checks: hex digest, known format
        return f"{self.prefix}{key}.{EXTENSIONS[fmt]}"

    def exists(self, object_key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=object_key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def put(self, key: str, fmt: str, data: bytes) -> str:
        """Upload unless the object exists already (same key, same bytes); return the object key."""
        object_key = self.object_key(key, fmt)
        if not self.exists(object_key):
            self.client.put_object(Bucket=self.bucket, Key=object_key, Body=data, ContentType=CONTENT_TYPES[fmt],
                                   CacheControl="public, max-age=31536000, immutable")  # fmt: skip
        return object_key

    def get(self, key: str, fmt: str) -> bytes | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key, fmt))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return obj["Body"].read()

    def owns(self, object_key: str) -> bool:
        """True for a key this store could have written: ``<prefix><sha256>.<ext>``, nothing else (no user paths)."""
        name = object_key[len(self.prefix) :] if object_key.startswith(self.prefix) else ""
        return bool(_OBJECT_NAME.match(name))

    def url(self, object_key: str) -> str:
        if self.public_url:
            return f"{self.public_url}/{object_key}"
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": object_key}, ExpiresIn=self.url_expires
        )

    def fetch_into(self, store: ImageStore, key: str, fmt: str) -> Path | None:
        """Make the local cache hold ``key`` if the bucket has it (another host made it); return the path."""
        found = store.find(key, fmt)
        if found is not None:
            return found
        data = self.get(key, fmt)
        return store.write(key, fmt, data) if data is not None else None

    def publish(self, result: dict[str, Any]) -> dict[str, Any]:
        """Upload every file of a job result; add ``object_key`` and ``url`` to each and to the result."""
        for entry in result.get("files", []):
            data = Path(entry["path"]).read_bytes()
            entry["object_key"] = self.put(entry["key"], entry["format"], data)
            entry["url"] = self.url(entry["object_key"])
        if result.get("files"):
            result["object_key"] = result["files"][0]["object_key"]
            result["url"] = result["files"][0]["url"]
            result["bucket"] = self.bucket
        return result


@lru_cache(maxsize=1)
def default_store() -> ObjectStore:
    """One client per worker process, from the environment."""
    return ObjectStore.from_env()
