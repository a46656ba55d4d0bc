"""Supabase Storage's object API in miniature, on the test database's storage schema.

Objects are rows of ``storage.objects`` (tests/sql/storage_schema.sql) written, read and
deleted in a transaction switched to the caller's role, exactly as Storage does it, so the
policies of our migration decide who may touch what; the bytes live in a directory.
What Storage enforces before the policies is enforced too: the bucket must exist, the
content type must be one of the bucket's ``allowed_mime_types`` and the object no larger
than its ``file_size_limit`` (capped by the service's own limit).

Answers are shaped as Storage's: HTTP 400 (500 for server faults) with a body
``{statusCode, code, error, message}`` whose ``statusCode`` is the meaningful one, e.g.
``"413" Payload too large`` or ``"415" invalid_mime_type`` (supabase/storage:
src/internal/errors/codes.ts, src/http/error-handler.ts, src/storage/uploader.ts).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.postgrest import ANON_ROLE, Claims, Jwks, verification_key

# Storage's default global upload limit (FILE_SIZE_LIMIT, 50 MB); a bucket may lower it.
GLOBAL_FILE_SIZE_LIMIT = 50 * 1024 * 1024

SET_SCOPE = (
    "select set_config('role', %(role)s, true),"
    " set_config('request.jwt.claim.role', %(role)s, true),"
    " set_config('request.jwt.claim.sub', %(sub)s, true),"
    " set_config('request.jwt.claims', %(claims)s, true),"
    " set_config('request.method', %(method)s, true),"
    " set_config('request.path', %(path)s, true),"
    " set_config('storage.allow_delete_query', 'true', true)"
)


class StorageError(Exception):
    """One of Storage's renderable errors."""

    def __init__(self, status: int, code: str, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.error, self.message = status, code, error, message

    def response(self) -> httpx.Response:
        body = {
            "statusCode": str(self.status),
            "code": self.code,
            "error": self.error,
            "message": self.message,
        }
        return httpx.Response(500 if self.status >= 500 else 400, json=body)


def access_denied(message: str) -> StorageError:
    return StorageError(403, "AccessDenied", "Unauthorized", message)


def object_not_found() -> StorageError:
    return StorageError(404, "NoSuchKey", "not_found", "Object not found")


def bucket_not_found() -> StorageError:
    return StorageError(404, "NoSuchBucket", "Bucket not found", "Bucket not found")


def database_error(exc: psycopg.Error) -> StorageError:
    """Storage's DBError.fromDBError, for the codes our requests can meet."""
    message = exc.diag.message_primary or str(exc)
    if exc.sqlstate == "42501":
        return access_denied(
            "new row violates row-level security policy"
            if "row-level security" in message
            else message
        )
    if exc.sqlstate == "23505":
        return StorageError(
            409, "ResourceAlreadyExists", "Duplicate", "The resource already exists"
        )
    return StorageError(
        500, "DatabaseError", "DatabaseError", f"database error, code: {exc.sqlstate}"
    )


def allowed_mime_type(mime_type: str, allowed: list[str]) -> bool:
    """Storage's validateMimeType: ``type/subtype`` or ``type/*`` entries."""
    kind, _, subtype = mime_type.partition("/")
    return bool(subtype) and any(
        entry.partition("/")[0] == kind and entry.partition("/")[2] in ("*", subtype)
        for entry in allowed
    )


@dataclass(frozen=True)
class Upload:
    data: bytes
    mime_type: str
    cache_control: str


def read_upload(request: httpx.Request) -> Upload:
    """The file of storage3's multipart upload (``file`` part, ``cacheControl`` field), or
    a raw body typed by its Content-Type."""
    body = request.read()
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return Upload(body, content_type or "application/octet-stream", "no-cache")
    boundary = content_type.partition("boundary=")[2].strip('"').encode()
    parts: dict[str, tuple[dict[str, str], bytes]] = {}
    for chunk in body.split(b"--" + boundary)[1:-1]:
        head, _, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if ": " in line)
        fields = {k.lower(): v for k, v in fields.items()}
        name = fields.get("content-disposition", "").partition('name="')[2].partition('"')[0]
        parts[name] = (fields, content.removesuffix(b"\r\n"))
    if "file" not in parts:
        raise StorageError(400, "InvalidRequest", "InvalidRequest", "No content provided")
    file_headers, data = parts["file"]
    cache = parts.get("cacheControl")
    return Upload(
        data=data,
        mime_type=file_headers.get("content-type", "application/octet-stream"),
        cache_control=f"max-age={cache[1].decode().strip()}" if cache else "no-cache",
    )


def verify_caller(secret: str, token: str | None, jwks: Jwks | None = None) -> Claims:
    """Storage's JWT check (src/http/plugins/jwt.ts, src/internal/auth/jwt.ts): the secret
    for HS256, the JWKS key for asymmetric tokens; a token that does not verify, an API key
    sent as a bearer included, is AccessDenied (403) with jose's message."""
    if not token:
        raise access_denied("No token provided")
    try:
        key, algorithms = verification_key(token, secret, jwks)
        claims: Claims = jwt.decode(
            token, key, algorithms=algorithms, options={"verify_aud": False}
        )
    except jwt.ExpiredSignatureError as exc:
        raise access_denied('"exp" claim timestamp check failed') from exc
    except (jwt.InvalidSignatureError, jwt.InvalidKeyError) as exc:
        raise access_denied("signature verification failed") from exc
    except jwt.PyJWTError as exc:
        raise access_denied("Invalid Compact JWS") from exc
    return claims


def signed_url(secret: str, bucket_id: str, key: str, expires_in: int) -> httpx.Response:
    now = int(time.time())
    token = jwt.encode(
        {"url": f"{bucket_id}/{key}", "iat": now, "exp": now + expires_in},
        secret,
        algorithm="HS256",
    )
    return httpx.Response(200, json={"signedURL": f"/object/sign/{bucket_id}/{key}?token={token}"})


def verify_signed_url(secret: str, bucket_id: str, key: str, params: httpx.QueryParams) -> None:
    try:
        claims = jwt.decode(params.get("token", ""), secret, algorithms=["HS256"])
    except jwt.PyJWTError as exc:
        raise StorageError(400, "InvalidJWT", "InvalidJWT", str(exc)) from exc
    if claims.get("url") != f"{bucket_id}/{key}":
        raise StorageError(
            400, "InvalidSignature", "InvalidSignature", "The url do not match the signature"
        )


class ObjectFiles:
    """The bytes: ``<root>/<bucket>/<key>``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, bucket_id: str, key: str) -> Path:
        base = (self.root / bucket_id).resolve()
        target = (base / key).resolve()
        if base not in target.parents:
            raise StorageError(400, "InvalidKey", "InvalidKey", f"Invalid key: {key}")
        return target

    def write(self, bucket_id: str, key: str, data: bytes) -> None:
        target = self.path(bucket_id, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def read(self, bucket_id: str, key: str) -> httpx.Response:
        target = self.path(bucket_id, key)
        if not target.is_file():
            raise object_not_found()
        return httpx.Response(200, content=target.read_bytes())

    def remove(self, bucket_id: str, key: str) -> bool:
        target = self.path(bucket_id, key)
        existed = target.is_file()
        target.unlink(missing_ok=True)
        return existed


class StorageAPI:
    """``/storage/v1``: object upload, download, remove and signed URLs."""

    def __init__(
        self,
        api_conninfo: str,
        admin_conninfo: str,
        secret: str,
        root: Path,
        jwks: Jwks | None = None,
    ) -> None:
        """``api_conninfo`` logs in as authenticator (requests switch to the caller's role);
        ``admin_conninfo`` is Storage's own view (buckets, signed downloads); ``jwks`` the
        project's public keys, for user tokens signed with its key pair."""
        self._conninfos = {"api": api_conninfo, "admin": admin_conninfo}
        self._conns: dict[str, psycopg.Connection[Any]] = {}
        self.secret = secret
        self.jwks = jwks
        self.files = ObjectFiles(root)

    def _connection(self, which: str) -> psycopg.Connection[Any]:
        conn = self._conns.get(which)
        if conn is None or conn.closed:
            conn = psycopg.connect(self._conninfos[which], autocommit=True, prepare_threshold=None)
            self._conns[which] = conn
        return conn

    @property
    def api(self) -> psycopg.Connection[Any]:
        return self._connection("api")

    @property
    def admin(self) -> psycopg.Connection[Any]:
        return self._connection("admin")

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()

    # -- dispatch -----------------------------------------------------------------------

    def handle(self, request: httpx.Request, resource: str, token: str | None) -> httpx.Response:
        try:
            return self._route(request, resource, token)
        except StorageError as error:
            return error.response()

    def _route(self, request: httpx.Request, resource: str, token: str | None) -> httpx.Response:
        parts = resource.split("/")
        method = request.method
        if parts[:2] == ["object", "sign"] and method == "GET":
            return self._signed_download(parts[2], "/".join(parts[3:]), request.url.params)
        if parts[:2] == ["object", "public"] and method == "GET":
            return self._public_download(parts[2], "/".join(parts[3:]))
        if parts[0] != "object" or len(parts) < 2:
            raise StorageError(
                404, "NotFound", "Not Found", f"Route {method}:/{resource} not found"
            )
        claims = verify_caller(self.secret, token, self.jwks)
        if parts[1] == "sign" and method == "POST":
            return self._sign(request, parts[2], "/".join(parts[3:]), claims)
        if parts[1] == "authenticated" and method == "GET":
            return self._download(request, parts[2], "/".join(parts[3:]), claims)
        bucket, key = parts[1], "/".join(parts[2:])
        if method == "DELETE" and not key:
            prefixes = json.loads(request.content or b"{}").get("prefixes", [])
            return self._remove(request, bucket, prefixes, claims)
        if method in ("POST", "PUT") and key:
            upsert = method == "PUT" or request.headers.get("x-upsert") == "true"
            return self._upload(request, bucket, key, claims, upsert=upsert)
        if method == "GET" and key:
            return self._download(request, bucket, key, claims)
        raise StorageError(404, "NotFound", "Not Found", f"Route {method}:/{resource} not found")

    # -- requests -----------------------------------------------------------------------

    def _upload(
        self, request: httpx.Request, bucket_id: str, key: str, claims: Claims, *, upsert: bool
    ) -> httpx.Response:
        bucket = self._bucket(bucket_id)
        upload = read_upload(request)
        allowed = bucket["allowed_mime_types"] or []
        if allowed and not allowed_mime_type(upload.mime_type, allowed):
            raise StorageError(
                415,
                "InvalidMimeType",
                "invalid_mime_type",
                f"mime type {upload.mime_type} is not supported",
            )
        limit = min(bucket["file_size_limit"] or GLOBAL_FILE_SIZE_LIMIT, GLOBAL_FILE_SIZE_LIMIT)
        row = object_row(bucket_id, key, claims.get("sub"), upload)
        insert = (
            "insert into storage.objects (bucket_id, name, owner, owner_id, metadata, version)"
            " values (%(bucket_id)s, %(name)s, %(owner)s, %(owner_id)s, %(metadata)s,"
            " %(version)s)"
        )
        if upsert:
            insert += (
                " on conflict (name, bucket_id) do update set metadata = excluded.metadata,"
                " version = excluded.version, owner = excluded.owner,"
                " owner_id = excluded.owner_id"
            )
        with self._scope(request, claims) as cur:
            cur.execute(insert + " returning id", row)
            written = cur.fetchone()
            # Storage learns the size while streaming, after the policy check.
            if len(upload.data) > limit:
                raise StorageError(
                    413,
                    "EntityTooLarge",
                    "Payload too large",
                    "The object exceeded the maximum allowed size",
                )
            self.files.write(bucket_id, key, upload.data)
        assert written is not None
        return httpx.Response(200, json={"Id": str(written["id"]), "Key": f"{bucket_id}/{key}"})

    def _download(
        self, request: httpx.Request, bucket_id: str, key: str, claims: Claims
    ) -> httpx.Response:
        if self._bucket(bucket_id)["public"]:
            found = self._exists(bucket_id, key)
        else:
            found = self._visible(request, claims, bucket_id, key)
        return self._bytes(bucket_id, key, found)

    def _remove(
        self, request: httpx.Request, bucket_id: str, keys: list[str], claims: Claims
    ) -> httpx.Response:
        """Deletes what the policies let the caller delete; the rest is skipped silently."""
        self._bucket(bucket_id)
        with self._scope(request, claims) as cur:
            cur.execute(
                "delete from storage.objects where bucket_id = %s and name = any(%s)"
                " returning id, bucket_id, name, owner, owner_id, metadata, version",
                (bucket_id, keys),
            )
            removed = cur.fetchall()
        for row in removed:
            self.files.remove(bucket_id, row["name"])
        return httpx.Response(
            200,
            content=json.dumps(removed, default=str).encode(),
            headers={"Content-Type": "application/json"},
        )

    def _sign(
        self, request: httpx.Request, bucket_id: str, key: str, claims: Claims
    ) -> httpx.Response:
        """A signed URL only for an object the caller may select."""
        self._bucket(bucket_id)
        if not self._visible(request, claims, bucket_id, key):
            raise object_not_found()
        expires_in = int(json.loads(request.content or b"{}").get("expiresIn", 60))
        return signed_url(self.secret, bucket_id, key, expires_in)

    def _signed_download(
        self, bucket_id: str, key: str, params: httpx.QueryParams
    ) -> httpx.Response:
        verify_signed_url(self.secret, bucket_id, key, params)
        return self._bytes(bucket_id, key, self._exists(bucket_id, key))

    def _public_download(self, bucket_id: str, key: str) -> httpx.Response:
        if not self._bucket(bucket_id)["public"]:
            raise bucket_not_found()
        return self._bytes(bucket_id, key, self._exists(bucket_id, key))

    # -- helpers ------------------------------------------------------------------------

    def _bucket(self, bucket_id: str) -> dict[str, Any]:
        with self.admin.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "select id, public, file_size_limit, allowed_mime_types"
                " from storage.buckets where id = %s",
                (bucket_id,),
            )
            bucket = cur.fetchone()
        if bucket is None:
            raise bucket_not_found()
        return bucket

    @contextmanager
    def _scope(
        self, request: httpx.Request, claims: Claims
    ) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        """A transaction switched to the caller's role, with the settings Storage sets (its
        scope.ts); a database error becomes Storage's answer to it."""
        try:
            with self.api.transaction(), self.api.cursor(row_factory=dict_row) as cur:
                cur.execute(
                    SET_SCOPE,
                    {
                        "role": str(claims.get("role") or ANON_ROLE),
                        "sub": str(claims.get("sub") or ""),
                        "claims": json.dumps(claims),
                        "method": request.method,
                        "path": request.url.path,
                    },
                )
                yield cur
        except psycopg.Error as exc:
            raise database_error(exc) from exc

    def _visible(self, request: httpx.Request, claims: Claims, bucket_id: str, key: str) -> bool:
        """Whether the caller's select policies show the object."""
        with self._scope(request, claims) as cur:
            cur.execute(
                "select 1 from storage.objects where bucket_id = %s and name = %s",
                (bucket_id, key),
            )
            return cur.fetchone() is not None

    def _exists(self, bucket_id: str, key: str) -> bool:
        """Storage's superuser lookup (public buckets, signed links): no policy applies."""
        row = self.admin.execute(
            "select 1 from storage.objects where bucket_id = %s and name = %s", (bucket_id, key)
        ).fetchone()
        return row is not None

    def _bytes(self, bucket_id: str, key: str, found: bool) -> httpx.Response:
        if not found:
            raise object_not_found()
        return self.files.read(bucket_id, key)


def object_row(bucket_id: str, key: str, sub: Any, upload: Upload) -> dict[str, Any]:
    """The storage.objects row of an upload: owned by the token's subject, as Storage
    records it (``owner`` only when the subject is a uuid, ``owner_id`` always)."""
    owner = str(sub) if sub else None
    metadata = {
        "size": len(upload.data),
        "mimetype": upload.mime_type,
        "cacheControl": upload.cache_control,
        "contentLength": len(upload.data),
        "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
    }
    return {
        "bucket_id": bucket_id,
        "name": key,
        "owner": owner if owner and _is_uuid(owner) else None,
        "owner_id": owner,
        "metadata": Jsonb(metadata),
        "version": str(uuid.uuid4()),
    }


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
