"""A Supabase project's API in miniature, in front of the real test database (tests only).

respx routes supabase-py's HTTP requests here, so the hosted transport is tested against
the same SQL, grants and RLS as production, with failures injected at the HTTP boundary.
Each part does what its real counterpart does, per its documentation:

- **PostgREST** (``/rest/v1``): the ``Authorization`` bearer JWT (or the ``apikey`` when
  there is none) is verified with the project secret and becomes the role and
  ``request.jwt.claims`` of one transaction; ``POST /rpc/<fn>`` calls the function with
  the body's named arguments; ``GET /<table>?select=&order=`` reads rows as that role.
  Errors come back as ``{code, message, details, hint}`` with PostgREST's status.
- **Auth** (``/auth/v1``): the password and refresh-token grants, answering with
  Supabase-shaped sessions; users are real ``auth.users`` rows.
- **Storage** (``/storage/v1``): upload, download, remove and signed URLs on a directory;
  a user may only touch objects under ``<their user id>/`` (Storage RLS on our bucket).

Faults: ``gateway.fail(path, *faults)`` makes the next requests to ``path`` meet them in
order: ``"drop"`` (the connection fails before the server sees the request),
``"drop_after"`` (the server does the work, then the connection drops before the answer),
``"timeout"`` (the server does the work, the client gives up waiting) or an
``httpx.Response`` answered instead of the work (a 503 from PostgREST, a 502 from a proxy).
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections import defaultdict, deque
from datetime import date, datetime
from datetime import time as clock_time
from decimal import Decimal
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import respx
from psycopg import sql
from psycopg.rows import dict_row

from portraitkit.auth import (
    LocalUser,
    create_local_user,
    issue_service_token,
    issue_user_token,
    verify_token,
)
from portraitkit.database import rpc
from portraitkit.errors import PortraitkitError

Fault = str | httpx.Response
Claims = dict[str, Any]

# PostgREST docs, references/errors, "HTTP Status Codes": SQLSTATE -> status.
STATUS_BY_SQLSTATE = {
    "23503": 409,
    "23505": 409,
    "25006": 405,
    "42883": 404,
    "42P01": 404,
    "53400": 500,
    "P0001": 400,
}
STATUS_BY_CLASS = {
    "08": 503,
    "09": 500,
    "0L": 403,
    "0P": 403,
    "25": 500,
    "28": 403,
    "2D": 500,
    "38": 500,
    "39": 500,
    "3B": 500,
    "40": 500,
    "53": 503,
    "54": 500,
    "55": 500,
    "57": 500,
    "58": 500,
    "F0": 500,
    "HV": 500,
    "P0": 500,
    "XX": 500,
}


def postgrest_status(sqlstate: str, role: str) -> int:
    if sqlstate == "42501":
        return 401 if role == "anon" else 403
    if sqlstate.startswith("PT") and sqlstate[2:].isdigit():
        return int(sqlstate[2:])
    return STATUS_BY_SQLSTATE.get(sqlstate) or STATUS_BY_CLASS.get(sqlstate[:2], 400)


def database_error(exc: psycopg.Error, role: str) -> httpx.Response:
    """PostgREST's answer to an error raised in the database."""
    diag = exc.diag
    if exc.sqlstate == "PGRST":  # our raise_error: the body and status are in the error
        body = json.loads(diag.message_primary or "{}")
        status = int(json.loads(diag.message_detail or "{}").get("status", 400))
    else:
        body = {
            "code": exc.sqlstate,
            "message": diag.message_primary,
            "details": diag.message_detail,
            "hint": diag.message_hint,
        }
        status = postgrest_status(exc.sqlstate or "", role)
    return httpx.Response(status, json=body)


def postgrest_error(
    status: int, code: str, message: str, hint: str | None = None
) -> httpx.Response:
    return httpx.Response(
        status, json={"code": code, "message": message, "details": None, "hint": hint}
    )


def storage_error(status: int, error: str, message: str) -> httpx.Response:
    return httpx.Response(
        status, json={"statusCode": str(status), "error": error, "message": message}
    )


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date | clock_time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return str(value)  # uuid.UUID and the like


def json_response(status: int, data: Any) -> httpx.Response:
    content = json.dumps(data, default=_json_value).encode()
    return httpx.Response(status, content=content, headers={"Content-Type": "application/json"})


class Gateway:
    """PostgREST, Auth and Storage for one test database; see the module docstring."""

    def __init__(
        self,
        conninfo: str,
        jwt_secret: str,
        *,
        storage_root: Path,
        buckets: tuple[str, ...] = ("portraits",),
        access_token_ttl: int = 3600,
    ) -> None:
        self.conninfo = conninfo
        self.secret = jwt_secret
        self.storage_root = Path(storage_root)
        self.buckets = buckets
        self.access_token_ttl = access_token_ttl
        now = int(time.time())
        self.anon_key = jwt.encode(
            {"iss": "supabase-test", "role": "anon", "iat": now, "exp": now + 10 * 365 * 86400},
            jwt_secret,
            algorithm="HS256",
        )
        self.service_key = issue_service_token(jwt_secret)
        self.requests: list[tuple[str, str]] = []
        self._faults: dict[str, deque[Fault]] = defaultdict(deque)
        self._passwords: dict[str, str] = {}
        self._refresh_tokens: dict[str, LocalUser] = {}
        self._conn: psycopg.Connection[Any] | None = None

    # -- arranging and inspecting -------------------------------------------------------

    def mount(self, router: respx.MockRouter, base_url: str) -> Gateway:
        router.route(url__startswith=base_url).mock(side_effect=self.handle)
        return self

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.conninfo, autocommit=True, prepare_threshold=None)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def add_user(self, email: str, password: str, credits: int | None = None) -> LocalUser:
        """A signed-up user (a real auth.users row, so the profile trigger runs)."""
        user = create_local_user(self.conn, email, credits)
        self._passwords[email.lower()] = password
        return user

    def issue_session(self, user: LocalUser, ttl: int | None = None) -> dict[str, Any]:
        """A session as Supabase Auth answers a grant; ``ttl`` < 0 gives an expired token."""
        ttl = self.access_token_ttl if ttl is None else ttl
        refresh_token = secrets.token_urlsafe(16)
        self._refresh_tokens[refresh_token] = user
        return {
            "access_token": issue_user_token(self.secret, user.id, user.email, ttl=ttl),
            "token_type": "bearer",
            "expires_in": ttl,
            "expires_at": int(time.time()) + ttl,
            "refresh_token": refresh_token,
            "user": self._user_json(user.id),
        }

    def fail(self, path: str, *faults: Fault) -> None:
        self._faults[path].extend(faults)

    def count(self, method: str, path: str) -> int:
        return self.requests.count((method, path))

    # -- dispatch -----------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append((request.method, path))
        fault = self._faults[path].popleft() if self._faults[path] else None
        if isinstance(fault, httpx.Response):
            return fault
        if fault == "drop":
            raise httpx.ConnectError("Connection refused", request=request)
        response = self._serve(request, path)
        if fault == "drop_after":
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        if fault == "timeout":
            raise httpx.ReadTimeout("The read operation timed out", request=request)
        return response

    def _serve(self, request: httpx.Request, path: str) -> httpx.Response:
        if path.startswith("/storage/v1/"):
            return self._storage(request, path.removeprefix("/storage/v1/"))
        # Supabase's API gateway wants a valid project key on the REST and Auth routes.
        apikey = request.headers.get("apikey")
        if not apikey:
            return httpx.Response(401, json={"message": "No API key found in request"})
        try:
            verify_token(self.secret, apikey)
        except PortraitkitError:
            return httpx.Response(401, json={"message": "Invalid API key"})
        if path.startswith("/rest/v1/"):
            return self._rest(request, path.removeprefix("/rest/v1/"))
        if path.startswith("/auth/v1/"):
            return self._auth(request, path.removeprefix("/auth/v1/"))
        return httpx.Response(404, json={"message": "no Route matched with those values"})

    def _claims(self, request: httpx.Request) -> Claims | httpx.Response:
        """The request's verified claims (none: anon), or PostgREST's 401."""
        header = request.headers.get("authorization", "")
        token = (
            header[7:] if header.lower().startswith("bearer ") else request.headers.get("apikey")
        )
        if not token:
            return {"role": "anon"}
        try:
            return verify_token(self.secret, token)
        except PortraitkitError as exc:
            expired = isinstance(exc.__cause__, jwt.ExpiredSignatureError)
            response = postgrest_error(
                401,
                "PGRST303" if expired else "PGRST301",
                "JWT expired" if expired else exc.message,
            )
            response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            return response

    # -- PostgREST ----------------------------------------------------------------------

    def _rest(self, request: httpx.Request, resource: str) -> httpx.Response:
        claims = self._claims(request)
        if isinstance(claims, httpx.Response):
            return claims
        role = str(claims.get("role") or "anon")
        if resource.startswith("rpc/") and request.method == "POST":
            args = json.loads(request.content or b"{}")
            return self._call_function(resource.removeprefix("rpc/"), args, claims, role)
        if request.method == "GET" and "/" not in resource:
            return self._read_table(resource, request.url.params, claims, role)
        return postgrest_error(405, "PGRST117", f"Unsupported HTTP method: {request.method}")

    def _call_function(
        self, name: str, args: dict[str, Any], claims: Claims, role: str
    ) -> httpx.Response:
        if not self._function_accepts(name, set(args)):
            return postgrest_error(
                404,
                "PGRST202",
                f"Could not find the function public.{name}({', '.join(sorted(args))})"
                " in the schema cache",
                "Perhaps you meant to call a different function.",
            )
        try:
            return json_response(200, rpc.call(self.conn, name, args, claims=claims))
        except PortraitkitError as exc:
            assert isinstance(exc.__cause__, psycopg.Error), exc
            return database_error(exc.__cause__, role)

    def _function_accepts(self, name: str, arg_names: set[str]) -> bool:
        rows = self.conn.execute(
            "select coalesce(p.proargnames, '{}') from pg_catalog.pg_proc p"
            " join pg_catalog.pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname = 'public' and p.proname = %s",
            (name,),
        ).fetchall()
        return any(arg_names <= set(row[0]) for row in rows)

    def _read_table(
        self, table: str, params: httpx.QueryParams, claims: Claims, role: str
    ) -> httpx.Response:
        unknown = set(params) - {"select", "order"}
        if unknown:
            return postgrest_error(400, "PGRST100", f"Unsupported query parameters: {unknown}")
        select = params.get("select", "*")
        columns = (
            sql.SQL("*")
            if select == "*"
            else sql.SQL(", ").join(sql.Identifier(c.strip()) for c in select.split(","))
        )
        query = sql.SQL("select {} from public.{}").format(columns, sql.Identifier(table))
        if params.get("order"):
            query += sql.SQL(" order by ") + sql.SQL(", ").join(
                self._order_term(term) for term in params["order"].split(",")
            )
        try:
            with self.conn.transaction(), self.conn.cursor(row_factory=dict_row) as cur:
                cur.execute(rpc.SET_REQUEST, rpc.request_settings(claims))
                cur.execute(query)
                return json_response(200, cur.fetchall())
        except psycopg.Error as exc:
            return database_error(exc, role)

    @staticmethod
    def _order_term(term: str) -> sql.Composable:
        column, *modifiers = term.split(".")
        words = {
            "asc": "asc",
            "desc": "desc",
            "nullsfirst": "nulls first",
            "nullslast": "nulls last",
        }
        return sql.SQL(" ").join([sql.Identifier(column), *(sql.SQL(words[m]) for m in modifiers)])

    # -- Auth ---------------------------------------------------------------------------

    def _auth(self, request: httpx.Request, endpoint: str) -> httpx.Response:
        grant = request.url.params.get("grant_type")
        if endpoint == "token" and request.method == "POST":
            body = json.loads(request.content or b"{}")
            if grant == "password":
                return self._password_grant(body.get("email") or "", body.get("password"))
            if grant == "refresh_token":
                user = self._refresh_tokens.pop(body.get("refresh_token") or "", None)
                if user is None:
                    return self._auth_error(
                        400,
                        "refresh_token_not_found",
                        "Invalid Refresh Token: Refresh Token Not Found",
                    )
                return json_response(200, self.issue_session(user))
        return self._auth_error(404, "not_found", f"Unsupported: {request.method} {endpoint}")

    def _password_grant(self, email: str, password: str | None) -> httpx.Response:
        row = self.conn.execute(
            "select id, email from auth.users where lower(email) = lower(%s)", (email,)
        ).fetchone()
        if row is None or password is None or self._passwords.get(email.lower()) != password:
            return self._auth_error(400, "invalid_credentials", "Invalid login credentials")
        return json_response(200, self.issue_session(LocalUser(id=row[0], email=row[1])))

    @staticmethod
    def _auth_error(status: int, code: str, message: str) -> httpx.Response:
        return httpx.Response(status, json={"code": status, "error_code": code, "msg": message})

    def _user_json(self, user_id: uuid.UUID) -> dict[str, Any]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(
                "select id, aud, role, email, raw_app_meta_data as app_metadata,"
                " raw_user_meta_data as user_metadata, is_anonymous, created_at, updated_at"
                " from auth.users where id = %s",
                (user_id,),
            ).fetchone()
        assert row is not None
        return json.loads(json.dumps(row, default=_json_value))

    # -- Storage ------------------------------------------------------------------------

    def _storage(self, request: httpx.Request, resource: str) -> httpx.Response:
        parts = resource.split("/")
        if parts[:2] == ["object", "sign"] and request.method == "GET":
            return self._signed_download(parts[2], "/".join(parts[3:]), request.url.params)
        claims = self._claims(request)
        if isinstance(claims, httpx.Response):
            return storage_error(403, "Unauthorized", "jwt malformed or expired")
        sign = parts[:2] == ["object", "sign"]
        bucket, key = (parts[2], "/".join(parts[3:])) if sign else (parts[1], "/".join(parts[2:]))
        if parts[0] != "object" or bucket not in self.buckets:
            return storage_error(404, "Bucket not found", "Bucket not found")
        if request.method == "DELETE" and not key:
            prefixes = json.loads(request.content or b"{}").get("prefixes", [])
            return self._remove(bucket, prefixes, claims)
        if not self._may_touch(claims, key):
            return storage_error(403, "Unauthorized", "new row violates row-level security policy")
        target = self._object_file(bucket, key)
        if sign:
            return self._sign(bucket, key, target, json.loads(request.content or b"{}"))
        if request.method in ("POST", "PUT"):
            upsert = request.headers.get("x-upsert") == "true" or request.method == "PUT"
            if target.exists() and not upsert:
                return storage_error(409, "Duplicate", "The resource already exists")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_uploaded_bytes(request))
            return json_response(200, {"Key": f"{bucket}/{key}", "Id": str(uuid.uuid4())})
        if request.method == "GET":
            if not target.is_file():
                return storage_error(404, "not_found", "Object not found")
            return httpx.Response(200, content=target.read_bytes())
        return storage_error(405, "Method not allowed", request.method)

    def _may_touch(self, claims: Claims, key: str) -> bool:
        """Storage RLS on our bucket: the first path segment is the owner's id."""
        if claims.get("role") == "service_role":
            return True
        return claims.get("role") == "authenticated" and key.split("/")[0] == claims.get("sub")

    def _object_file(self, bucket: str, key: str) -> Path:
        base = (self.storage_root / bucket).resolve()
        target = (base / key).resolve()
        if base not in target.parents:
            raise ValueError(f"object key escapes the bucket: {key!r}")
        return target

    def _remove(self, bucket: str, keys: list[str], claims: Claims) -> httpx.Response:
        removed = []
        for key in keys:  # like Storage, silently skips what RLS hides
            target = self._object_file(bucket, key)
            if self._may_touch(claims, key) and target.is_file():
                target.unlink()
                removed.append({"name": key, "bucket_id": bucket})
        return json_response(200, removed)

    def _sign(self, bucket: str, key: str, target: Path, body: dict[str, Any]) -> httpx.Response:
        if not target.is_file():
            return storage_error(404, "not_found", "Object not found")
        expires_in = int(body.get("expiresIn", 60))
        token = jwt.encode(
            {"url": f"{bucket}/{key}", "exp": int(time.time()) + expires_in},
            self.secret,
            algorithm="HS256",
        )
        return json_response(200, {"signedURL": f"/object/sign/{bucket}/{key}?token={token}"})

    def _signed_download(self, bucket: str, key: str, params: httpx.QueryParams) -> httpx.Response:
        try:
            claims = jwt.decode(params.get("token", ""), self.secret, algorithms=["HS256"])
        except jwt.PyJWTError as exc:
            return storage_error(400, "InvalidJWT", str(exc))
        if claims.get("url") != f"{bucket}/{key}":
            return storage_error(400, "InvalidSignature", "The url do not match the signature")
        target = self._object_file(bucket, key)
        if not target.is_file():
            return storage_error(404, "not_found", "Object not found")
        return httpx.Response(200, content=target.read_bytes())


def _uploaded_bytes(request: httpx.Request) -> bytes:
    """The ``file`` part of storage3's multipart upload (or a raw body)."""
    body = request.read()
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return body
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload
    raise AssertionError("multipart upload without a file part")
