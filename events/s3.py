"""The S3-compatible object store that usage reports and audit segments are exported to."""

from __future__ import annotations

from typing import Any

import aioboto3

from soulbox.core.errors import InvalidRequest, Unavailable
from soulbox.core.settings import S3Settings


class ExportStore:
    """Writes and reads objects under ``settings.prefix`` in ``settings.bucket``."""

    def __init__(self, settings: S3Settings) -> None:
        if not settings.bucket:
            raise InvalidRequest("no export bucket configured (SOULBOX_S3__BUCKET)")
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self._session = aioboto3.Session()
        self._options: dict[str, Any] = {"region_name": settings.region}
        if settings.endpoint_url:
            self._options["endpoint_url"] = settings.endpoint_url
        if settings.access_key_id and settings.secret_access_key:
            self._options["aws_access_key_id"] = settings.access_key_id.get_secret_value()
            self._options["aws_secret_access_key"] = settings.secret_access_key.get_secret_value()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def put(self, name: str, body: bytes, *, content_type: str) -> str:
        """Store ``body`` at ``prefix + name``; the full key."""
        key = self.key(name)
        try:
            async with self._session.client("s3", **self._options) as s3:
                await s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)
        except Exception as exc:  # botocore raises many unrelated types
            raise Unavailable(f"cannot write s3://{self.bucket}/{key}: {exc}") from exc
        return key

    async def get(self, name: str) -> bytes:
        key = self.key(name)
        try:
            async with self._session.client("s3", **self._options) as s3:
                response = await s3.get_object(Bucket=self.bucket, Key=key)
                async with response["Body"] as body:
                    data: bytes = await body.read()
                    return data
        except Exception as exc:
            raise Unavailable(f"cannot read s3://{self.bucket}/{key}: {exc}") from exc

    async def list(self, name_prefix: str) -> list[str]:
        """The names (without ``prefix``) under ``prefix + name_prefix``, sorted."""
        found: list[str] = []
        try:
            async with self._session.client("s3", **self._options) as s3:
                paginator = s3.get_paginator("list_objects_v2")
                async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.key(name_prefix)):
                    found += [item["Key"][len(self.prefix) :] for item in page.get("Contents", [])]
        except Exception as exc:
            raise Unavailable(f"cannot list s3://{self.bucket}/{self.key(name_prefix)}: {exc}") from exc
        return sorted(found)
