"""A Supabase project's API in miniature, in front of the real test database (tests only).

respx routes supabase-py's HTTP requests here, so the hosted transport is tested against
the same SQL, grants and RLS as production, with failures injected at the HTTP boundary.
Each part refuses what its real counterpart refuses, checked independently of
portraitkit's own code:

- **API gateway** (Kong on Supabase): every route but Storage's signed and public
  downloads and Auth's JWKS needs ``apikey`` to be one of the project's keys (the legacy
  anon and service_role JWTs, or the opaque ``sb_publishable_...``/``sb_secret_...`` keys:
  anything else is 401 "Invalid API key"). Without ``Authorization`` it passes on the
  key's role token (publishable or anon: anon; secret or service_role: service_role);
  an ``Authorization`` that comes with the request goes through untouched, so a
  ``Bearer sb_...`` (what supabase-py sends until someone signs in, supabase/supabase-py
  #1230) reaches PostgREST and Storage, which refuse it as they refuse any bearer that is
  not a JWT: PostgREST 401 ``PGRST301`` "Expected 3 parts in JWT; got 1", Storage 403
  ``AccessDenied`` "Invalid Compact JWS" (in its HTTP 400 envelope). The Supabase CLI's
  local Kong drops such a header instead (internal/start/start.go, its ``BearerToken``
  rule); the stand-in does not, on purpose, so a client that sends one fails here.
- **PostgREST** (``/rest/v1``): tests/postgrest.py. Logs in as ``authenticator`` and can
  only switch to anon, authenticated and service_role.
- **Storage** (``/storage/v1``): tests/storage_api.py. Objects are ``storage.objects`` rows
  written as the caller's role, so the bucket's policies from our migration decide. Needs
  the storage schema (:func:`create_supabase_database`); on a database without one it falls
  back to tests/storage_folder.py (a directory where a user's objects are under their id).
- **Auth** (``/auth/v1``): the password and refresh-token grants, answering with
  Supabase-shaped sessions; users are real ``auth.users`` rows. Access tokens are signed
  with the project's JWT secret (HS256), or with ``user_tokens="ES256"`` with its key pair,
  as new projects sign them; the public key is served at ``/auth/v1/.well-known/jwks.json``
  and PostgREST, Storage and tests/realtime.py verify both kinds.

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
from dataclasses import dataclass
from datetime import date, datetime
from datetime import time as clock_time
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import httpx
import jwt
import psycopg
import respx
from cryptography.hazmat.primitives.asymmetric import ec
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from portraitkit.auth import LocalUser, create_local_user, issue_service_token, issue_user_token
from portraitkit.database.migrations import Migrator, bootstrap_files
from portraitkit.database.schema_files import schema_dirs
from tests.postgrest import PostgREST
from tests.storage_api import StorageAPI
from tests.storage_folder import FolderStorageAPI

Fault = str | httpx.Response

STORAGE_SCHEMA = Path(__file__).parent / "sql" / "storage_schema.sql"
# Storage routes the gateway lets through without a key: links handed to browsers.
OPEN_ROUTES = ("/storage/v1/object/sign/", "/storage/v1/object/public/")
JWKS_PATH = "/auth/v1/.well-known/jwks.json"
UserTokens = Literal["HS256", "ES256"]


@dataclass(frozen=True)
class ProjectKeys:
    """A project's JWT secret, signing key pair and API keys, shared by the gateway and the
    Realtime stand-in."""

    jwt_secret: str
    anon_key: str
    service_key: str
    publishable_key: str
    secret_key: str
    signing_key: ec.EllipticCurvePrivateKey
    signing_kid: str

    @classmethod
    def create(cls, jwt_secret: str) -> ProjectKeys:
        now = int(time.time())
        anon_key = jwt.encode(
            {"iss": "supabase-test", "role": "anon", "iat": now, "exp": now + 10 * 365 * 86400},
            jwt_secret,
            algorithm="HS256",
        )
        return cls(
            jwt_secret=jwt_secret,
            anon_key=anon_key,
            service_key=issue_service_token(jwt_secret),
            publishable_key=f"sb_publishable_{secrets.token_urlsafe(16)}",
            secret_key=f"sb_secret_{secrets.token_urlsafe(16)}",
            signing_key=ec.generate_private_key(ec.SECP256R1()),
            signing_kid=str(uuid.uuid4()),
        )

    def jwks(self) -> dict[str, Any]:
        """The public half of the signing key, as Supabase Auth publishes it."""
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.signing_key.public_key()))
        return {"keys": [{**public, "kid": self.signing_kid, "alg": "ES256", "use": "sig"}]}

    def sign_es256(self, claims: dict[str, Any]) -> str:
        return jwt.encode(
            claims, self.signing_key, algorithm="ES256", headers={"kid": self.signing_kid}
        )

    def role_token(self, apikey: str) -> str | None:
        """The JWT the gateway passes on for a project key; None for anything else."""
        return {
            self.anon_key: self.anon_key,
            self.service_key: self.service_key,
            self.publishable_key: self.anon_key,
            self.secret_key: self.service_key,
        }.get(apikey)


def create_supabase_database(server_url: str, name: str) -> str:
    """A new database shaped like a Supabase project: sql/ bootstrap, Storage's schema
    (tests/sql/storage_schema.sql), then supabase/migrations, so that our storage migration
    creates its bucket and policies. Returns its superuser URL."""
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = make_conninfo(server_url, dbname=name)
    with psycopg.connect(url, autocommit=True) as conn:
        for path in bootstrap_files(schema_dirs().bootstrap):
            with conn.transaction():
                conn.execute(path.read_bytes())
        with conn.transaction():
            conn.execute(STORAGE_SCHEMA.read_bytes())
    Migrator(url, bootstrap=True).migrate()
    return url


def drop_database(server_url: str, url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(str(name)))
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
    """The API gateway with PostgREST, Auth and Storage behind it; see the module docstring."""

    def __init__(
        self,
        conninfo: str,
        jwt_secret: str,
        *,
        storage_root: Path,
        access_token_ttl: int = 3600,
        keys: ProjectKeys | None = None,
        user_tokens: UserTokens = "HS256",
    ) -> None:
        self.conninfo = conninfo
        self.keys = keys or ProjectKeys.create(jwt_secret)
        if self.keys.jwt_secret != jwt_secret:
            raise ValueError("the project keys belong to another JWT secret")
        self.secret = jwt_secret
        self.access_token_ttl = access_token_ttl
        self.user_tokens: UserTokens = user_tokens
        self.requests: list[tuple[str, str]] = []
        self.received: list[httpx.Request] = []  # as they arrived, headers and all
        self._faults: dict[str, deque[Fault]] = defaultdict(deque)
        self._passwords: dict[str, str] = {}
        self._refresh_tokens: dict[str, LocalUser] = {}
        self._conn: psycopg.Connection[Any] | None = None
        self.postgrest = PostgREST(conninfo, jwt_secret, self.keys.jwks())
        has_storage = self.conn.execute(
            "select to_regclass('storage.objects') is not null"
        ).fetchone()
        self.storage: StorageAPI | FolderStorageAPI = (
            StorageAPI(
                self.postgrest.conninfo, conninfo, jwt_secret, Path(storage_root), self.keys.jwks()
            )
            if has_storage and has_storage[0]
            else FolderStorageAPI(jwt_secret, Path(storage_root), self.keys.jwks())
        )

    @property
    def anon_key(self) -> str:
        return self.keys.anon_key

    @property
    def service_key(self) -> str:
        return self.keys.service_key

    # -- arranging and inspecting -------------------------------------------------------

    def mount(self, router: respx.MockRouter, base_url: str) -> Gateway:
        router.route(url__startswith=base_url).mock(side_effect=self.handle)
        return self

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """A superuser connection: Auth's and Storage's own view of the database."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.conninfo, autocommit=True, prepare_threshold=None)
        return self._conn

    def close(self) -> None:
        self.postgrest.close()
        self.storage.close()
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
            "access_token": self.user_token(user, ttl),
            "token_type": "bearer",
            "expires_in": ttl,
            "expires_at": int(time.time()) + ttl,
            "refresh_token": refresh_token,
            "user": self._user_json(user.id),
        }

    def user_token(self, user: LocalUser, ttl: int | None = None) -> str:
        """An access token as Supabase Auth signs it: the claims of portraitkit's local
        tokens (Supabase's own), with the secret or, on ``user_tokens="ES256"``, the key
        pair."""
        ttl = self.access_token_ttl if ttl is None else ttl
        token = issue_user_token(self.secret, user.id, user.email, ttl=ttl)
        if self.user_tokens == "HS256":
            return token
        return self.keys.sign_es256(jwt.decode(token, options={"verify_signature": False}))

    def fail(self, path: str, *faults: Fault) -> None:
        self._faults[path].extend(faults)

    def count(self, method: str, path: str) -> int:
        return self.requests.count((method, path))

    # -- dispatch -----------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append((request.method, path))
        self.received.append(request)
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
        if request.method == "GET" and path.startswith(OPEN_ROUTES):
            return self.storage.handle(request, path.removeprefix("/storage/v1/"), None)
        if request.method == "GET" and path == JWKS_PATH:
            return json_response(200, self.keys.jwks())
        apikey = request.headers.get("apikey") or request.url.params.get("apikey")
        if not apikey:
            return json_response(
                401,
                {
                    "message": "No API key found in request",
                    "hint": "No `apikey` request header or url param was found.",
                },
            )
        key_token = self.keys.role_token(apikey)
        if key_token is None:
            return json_response(
                401,
                {
                    "message": "Invalid API key",
                    "hint": "Double check your Supabase `anon` or `service_role` API key.",
                },
            )
        # Passed on as it came: a bearer that is not a JWT is PostgREST's and Storage's to
        # refuse. Only a request without one acts as the key's role.
        authorization = request.headers.get("authorization") or f"Bearer {key_token}"
        token = authorization[7:] if authorization[:7].lower() == "bearer " else None
        if path.startswith("/rest/v1/"):
            return self.postgrest.handle(request, path.removeprefix("/rest/v1/"), token)
        if path.startswith("/storage/v1/"):
            return self.storage.handle(request, path.removeprefix("/storage/v1/"), token)
        if path.startswith("/auth/v1/"):
            return self._auth(request, path.removeprefix("/auth/v1/"))
        return json_response(404, {"message": "no Route matched with those values"})

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
        user: dict[str, Any] = json.loads(json.dumps(row, default=_json_value))
        return user
