"""The image route in S3 mode: any web host answers for any job's image, from the bucket.

With ``ZIMG_STORAGE=s3`` the workers on the GPU hosts upload every image to one
bucket, and a job's result names its ``object_key``. The web service usually runs
on another host, whose local image folder never saw the file, so
``GET /v1/jobs/<id>/image`` answers with a **302 redirect** to the object: a
presigned URL valid for ``ZIMG_S3_URL_EXPIRES`` seconds, or ``ZIMG_S3_PUBLIC_URL``
+ key for a public bucket or CDN. A redirect and not the bytes: the image then
travels from S3 (or the CDN) to the client directly, and the web service's
threads are never held by a download. A host that does have the file (a
one-host setup) still sends it itself, as in local mode.

Only keys the store itself could have written (``<prefix><sha256>.<ext>``) in the
configured bucket are ever signed, whatever a result in Redis says.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flask import Response

from ..settings import Settings

if TYPE_CHECKING:
    from workers.object_store import ObjectStore

#: Clients may cache the redirect for this long, and never past the presigned URL's expiry.
REDIRECT_MAX_AGE = 3600


def bucket_redirect(result: Mapping[str, Any], settings: Settings) -> Response | None:
    """A 302 to the job's object in the bucket, or ``None`` when the result has no object this host may sign."""
    object_key, bucket = result.get("object_key"), result.get("bucket")
    if not isinstance(object_key, str) or not settings.s3_bucket or bucket not in (None, settings.s3_bucket):
        return None
    store = _store(settings)
    if not store.owns(object_key):
        return None
    response = Response(status=302, headers={"Location": store.url(object_key)})
    max_age = min(REDIRECT_MAX_AGE, max(0, settings.s3_url_expires - 60)) if not store.public_url else 86_400
    response.headers["Cache-Control"] = f"private, max-age={max_age}"
    return response


_STORES: dict[tuple[Any, ...], ObjectStore] = {}


def _store(settings: Settings) -> ObjectStore:
    """One boto3 client per S3 configuration (per web process), built on first use."""
    from workers.object_store import ObjectStore

    key = (settings.s3_bucket, settings.s3_endpoint_url, settings.s3_region, settings.s3_prefix,
           settings.s3_public_url, settings.s3_url_expires, settings.s3_addressing_style)  # fmt: skip
    if key not in _STORES:
        _STORES[key] = ObjectStore.from_settings(settings)
    return _STORES[key]
