"""Storage on a database without Supabase Storage's schema (tests only).

With no ``storage.objects`` there are no policies to run, so this stand-in applies the one
rule our bucket's policies state: a user touches only ``<their user id>/...``, the service
role anything. It serves suites whose database was built without
tests/sql/storage_schema.sql; a database made by ``tests.gateway.create_supabase_database``
gets :class:`tests.storage_api.StorageAPI`, where the migration's policies decide.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx

from tests.postgrest import Claims, Jwks
from tests.storage_api import (
    ObjectFiles,
    StorageError,
    access_denied,
    bucket_not_found,
    object_not_found,
    read_upload,
    signed_url,
    verify_caller,
    verify_signed_url,
)

BUCKET = "portraits"


class FolderStorageAPI:
    """``/storage/v1`` object upload, download, remove and signed URLs on a directory.

    Callers' tokens are checked as Storage checks them: HS256 with ``secret``, or ES256/RS256
    with the key of ``jwks`` their ``kid`` names (see :func:`tests.storage_api.verify_caller`).
    """

    def __init__(self, secret: str, root: Path, jwks: Jwks | None = None) -> None:
        self.secret = secret
        self.jwks = jwks
        self.files = ObjectFiles(root)

    def close(self) -> None:
        pass

    def handle(self, request: httpx.Request, resource: str, token: str | None) -> httpx.Response:
        try:
            return self._route(request, resource, token)
        except StorageError as error:
            return error.response()

    def _route(self, request: httpx.Request, resource: str, token: str | None) -> httpx.Response:
        parts = resource.split("/")
        sign = parts[:2] == ["object", "sign"]
        if sign and request.method == "GET":
            bucket, key = parts[2], "/".join(parts[3:])
            verify_signed_url(self.secret, bucket, key, request.url.params)
            return self.files.read(bucket, key)
        claims = verify_caller(self.secret, token, self.jwks)
        bucket, key = (parts[2], "/".join(parts[3:])) if sign else (parts[1], "/".join(parts[2:]))
        if parts[0] != "object" or bucket != BUCKET:
            raise bucket_not_found()
        if request.method == "DELETE" and not key:
            names = json.loads(request.content or b"{}").get("prefixes", [])
            removed = [
                {"name": name, "bucket_id": bucket}
                for name in names
                if self._may_touch(claims, name) and self.files.remove(bucket, name)
            ]
            return httpx.Response(200, json=removed)
        if not self._may_touch(claims, key):
            raise access_denied("new row violates row-level security policy")
        if sign:
            if not self.files.path(bucket, key).is_file():
                raise object_not_found()
            expires_in = int(json.loads(request.content or b"{}").get("expiresIn", 60))
            return signed_url(self.secret, bucket, key, expires_in)
        if request.method in ("POST", "PUT"):
            upsert = request.method == "PUT" or request.headers.get("x-upsert") == "true"
            if self.files.path(bucket, key).exists() and not upsert:
                raise StorageError(
                    409, "ResourceAlreadyExists", "Duplicate", "The resource already exists"
                )
            self.files.write(bucket, key, read_upload(request).data)
            return httpx.Response(200, json={"Key": f"{bucket}/{key}", "Id": str(uuid.uuid4())})
        return self.files.read(bucket, key)

    @staticmethod
    def _may_touch(claims: Claims, key: str) -> bool:
        if claims.get("role") == "service_role":
            return True
        return claims.get("role") == "authenticated" and key.split("/")[0] == claims.get("sub")
