"""PostgREST as Supabase runs it, in miniature, in front of the test database (tests only).

It checks what real PostgREST checks, independently of portraitkit's own code:

- It logs in as ``authenticator`` (LOGIN, NOINHERIT, a member of anon, authenticated and
  service_role only) and switches per request with ``set_config('role', <jwt role>, true)``,
  so a token claiming any other role fails the way PostgREST's does: PostgreSQL refuses
  the switch (42501 ``permission denied to set role``, 403; or 22023 ``role ... does not
  exist``, 401 since PostgREST 13).
- It verifies JWTs itself (HS256 family with the project's secret; ES256/RS256/EdDSA with
  the key of the project's JWKS that the token's ``kid`` names, as new projects sign user
  tokens; ``exp``/``nbf``/``iat`` with PostgREST's 30 s skew, any ``aud``) and answers
  PGRST301/PGRST303 with PostgREST's messages.
- RPC builds PostgREST's own SQL: the JSON body goes through ``json_to_record`` typed by
  the function's declared parameters, the function is called with named arguments, and
  the answer is built by PostgreSQL's ``json_agg`` (a scalar's value, or rows). A POST to
  a STABLE or IMMUTABLE function runs read-only, as in PostgREST's planner.
- Errors map SQLSTATE to HTTP status per PostgREST's Error.hs.

Sources: PostgREST src/PostgREST/Error.hs (mapSQLtoHTTP, JwtError), Auth/Jwt.hs,
Query/QueryBuilder.hs (callPlanToQuery), Query/SqlFragment.hs (fromJsonBodyF), Plan.hs
(findProc, txMode); docs references/errors, references/transactions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

Claims = dict[str, Any]

ANON_ROLE = "anon"
API_ROLES = ("anon", "authenticated", "service_role")
AUTHENTICATOR = "authenticator"
# Test-only: the embedded server is private to the test session.
AUTHENTICATOR_PASSWORD = "portraitkit-test-authenticator"
JWT_ALGORITHMS = ["HS256", "HS384", "HS512"]
ASYMMETRIC_ALGORITHMS = ("ES256", "RS256", "EdDSA")
ALLOWED_SKEW_SECONDS = 30  # PostgREST Auth/Jwt.hs
Jwks = Mapping[str, Any]


def authenticator_conninfo(superuser_conninfo: str) -> str:
    """A conninfo logging in as ``authenticator``, made ready with the superuser first:
    LOGIN, NOINHERIT, a member of exactly anon, authenticated and service_role."""
    with psycopg.connect(superuser_conninfo, autocommit=True) as admin:
        admin.execute(
            """
            do $$
            begin
              if not exists (select from pg_roles where rolname = 'authenticator') then
                create role authenticator login noinherit;
              end if;
            end
            $$
            """
        )
        admin.execute(
            sql.SQL("alter role authenticator with login noinherit password {}").format(
                sql.Literal(AUTHENTICATOR_PASSWORD)
            )
        )
        admin.execute("grant anon, authenticated, service_role to authenticator")
        memberships = {
            row[0]
            for row in admin.execute(
                "select r.rolname from pg_auth_members m"
                " join pg_roles r on r.oid = m.roleid"
                " join pg_roles a on a.oid = m.member where a.rolname = 'authenticator'"
            )
        }
    if memberships != set(API_ROLES):
        raise RuntimeError(
            f"authenticator must be a member of {sorted(API_ROLES)} only, not {sorted(memberships)}"
        )
    return make_conninfo(superuser_conninfo, user=AUTHENTICATOR, password=AUTHENTICATOR_PASSWORD)


# -- JWTs ---------------------------------------------------------------------------------


class JwtRejected(Exception):
    """PostgREST's answer to a token it will not use (PGRST301/PGRST303, HTTP 401)."""

    def __init__(self, code: str, message: str, details: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details

    def response(self) -> httpx.Response:
        answer = postgrest_error(401, self.code, self.message, details=self.details)
        answer.headers["WWW-Authenticate"] = (
            f'Bearer error="invalid_token", error_description="{self.message}"'
        )
        return answer


def verification_key(token: str, secret: str, jwks: Jwks | None) -> tuple[Any, list[str]]:
    """The key a token's header asks for, and the algorithms it may be used with: the
    shared secret for the HS256 family, else the JWKS key its ``kid`` names (its algorithm
    from the key, never from the token). Shared by the stand-ins, which verify alike.
    Raises ``jwt.InvalidAlgorithmError`` or ``jwt.InvalidKeyError`` (no such key)."""
    header = jwt.get_unverified_header(token)
    algorithm = header.get("alg")
    if algorithm in JWT_ALGORITHMS:
        return secret, JWT_ALGORITHMS
    if algorithm not in ASYMMETRIC_ALGORITHMS:
        raise jwt.InvalidAlgorithmError(f"The algorithm {algorithm!r} is not allowed")
    for candidate in (jwks or {}).get("keys", []):
        if candidate.get("kid") == header.get("kid") and candidate.get("kty") != "oct":
            key = jwt.PyJWK.from_dict(dict(candidate))
            return key.key, [key.algorithm_name]
    raise jwt.InvalidKeyError("No key of the project's JWKS matches the token")


def verify_jwt(secret: str, token: str, jwks: Jwks | None = None) -> Claims:
    """The claims of a token PostgREST would accept, else :class:`JwtRejected`."""
    if not token:
        raise JwtRejected("PGRST301", "Empty JWT is sent in Authorization header")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtRejected("PGRST301", f"Expected 3 parts in JWT; got {len(parts)}")
    try:
        key, algorithms = verification_key(token, secret, jwks)
        claims = jwt.decode(
            token,
            key,
            algorithms=algorithms,
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
            },
        )
    except jwt.InvalidAlgorithmError as exc:
        raise JwtRejected("PGRST301", "Wrong or unsupported encoding algorithm", str(exc)) from exc
    except (jwt.InvalidSignatureError, jwt.InvalidKeyError) as exc:
        raise JwtRejected(
            "PGRST301",
            "No suitable key or wrong key type",
            "None of the keys was able to decode the JWT",
        ) from exc
    except jwt.PyJWTError as exc:
        raise JwtRejected("PGRST301", "JWT cryptographic operation failed") from exc
    now = int(time.time())
    # claim, how it fails (a time before/after now, beyond the skew), PostgREST's message
    checks = (
        ("exp", -1, "JWT expired"),
        ("nbf", 1, "JWT not yet valid"),
        ("iat", 1, "JWT issued at future"),
    )
    for claim, direction, message in checks:
        if claim not in claims:
            continue
        value = claims[claim]
        if not isinstance(value, int | float):
            raise JwtRejected("PGRST303", f"The JWT '{claim}' claim must be a number")
        if (int(value) - now) * direction > ALLOWED_SKEW_SECONDS:
            raise JwtRejected("PGRST303", message)
    return claims


# -- errors -------------------------------------------------------------------------------

# PostgREST Error.hs, mapSQLtoHTTP: exact codes first, then classes; anything else is 400.
STATUS_BY_SQLSTATE = {
    "23503": 409,
    "23505": 409,
    "25006": 405,
    "42883": 404,
    "42P01": 404,
    "42P17": 500,
    "53400": 500,
    "57P01": 503,
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


def postgrest_status(sqlstate: str, message: str, authed: bool) -> int:
    """``authed``: the request's role is not the anonymous one."""
    if sqlstate == "42501":
        return 403 if authed else 401
    if sqlstate == "22023":  # the JWT's role does not exist (PostgREST 13+)
        return 401 if message.startswith("role") and message.endswith("does not exist") else 400
    if sqlstate == "21000":
        return 400 if message.endswith("requires a WHERE clause") else 500
    if sqlstate.startswith("PT"):
        return int(sqlstate[2:]) if sqlstate[2:].isdigit() else 500
    return STATUS_BY_SQLSTATE.get(sqlstate) or STATUS_BY_CLASS.get(sqlstate[:2], 400)


def postgrest_error(
    status: int,
    code: str,
    message: str,
    hint: str | None = None,
    details: str | None = None,
) -> httpx.Response:
    return httpx.Response(
        status, json={"code": code, "message": message, "details": details, "hint": hint}
    )


def database_error(exc: psycopg.Error, role: str) -> httpx.Response:
    """PostgREST's answer to an error raised in the database."""
    diag = exc.diag
    if exc.sqlstate == "PGRST":  # full response control: body and status are in the error
        body = json.loads(diag.message_primary or "{}")
        status = int(json.loads(diag.message_detail or "{}").get("status", 400))
        return httpx.Response(status, json=body)
    message = diag.message_primary or str(exc)
    body = {
        "code": exc.sqlstate,
        "message": message,
        "details": diag.message_detail,
        "hint": diag.message_hint,
    }
    status = postgrest_status(exc.sqlstate or "", message, role != ANON_ROLE)
    answer = httpx.Response(status, json=body)
    if status == 401:
        answer.headers["WWW-Authenticate"] = "Bearer"
    return answer


# -- the request scope --------------------------------------------------------------------

SET_SCOPE = sql.SQL(
    "select set_config('role', %(role)s, true),"
    " set_config('request.jwt.claims', %(claims)s, true),"
    " set_config('request.method', %(method)s, true),"
    " set_config('request.path', %(path)s, true),"
    " set_config('request.headers', %(headers)s, true),"
    " set_config('search_path', 'public, extensions', true)"
)


def enter_scope(cur: psycopg.Cursor[Any], request: httpx.Request, path: str, claims: Claims) -> str:
    """Switch the transaction to the claims' role, with the request settings PostgREST
    sets (PreQuery.hs). Raises what PostgreSQL raises when the role cannot be switched to."""
    role = str(claims.get("role") or ANON_ROLE)
    cur.execute(
        SET_SCOPE,
        {
            "role": role,
            "claims": json.dumps({**claims, "role": role}),
            "method": request.method,
            "path": path,
            "headers": json.dumps({k.lower(): v for k, v in request.headers.items()}),
        },
    )
    return role


# -- RPC ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Routine:
    """A function as PostgREST's schema cache knows it."""

    name: str
    params: tuple[tuple[str, str], ...]  # input (name, type) in declaration order
    required: frozenset[str]
    volatile: bool
    returns_set: bool
    returns_composite: bool

    def accepts(self, keys: set[str]) -> bool:
        """PostgREST's findProc: every required parameter given, nothing unknown."""
        names = {name for name, _ in self.params}
        return self.required <= keys <= names

    def query(self, keys: set[str]) -> sql.Composed:
        """callPlanToQuery: arguments from json_to_record, named call, JSON answer."""
        given = [(name, type_) for name, type_ in self.params if name in keys]
        arguments = sql.SQL(", ").join(
            sql.SQL("{} := pgrst_body.{}").format(sql.Identifier(n), sql.Identifier(n))
            for n, _ in given
        )
        function = sql.SQL("public.{}({})").format(sql.Identifier(self.name), arguments)
        if self.returns_composite:
            call = sql.SQL("{} pgrst_call").format(function)
            value = sql.SQL("pgrst_call")
        else:
            call = sql.SQL("(select {} pgrst_scalar) pgrst_call").format(function)
            value = sql.SQL("pgrst_call.pgrst_scalar")
        answer = (
            sql.SQL("coalesce(json_agg({}), '[]')::text")
            if self.returns_set
            else sql.SQL("coalesce((json_agg({}) -> 0)::text, 'null')")
        ).format(value)
        if not given:
            return sql.SQL("select {} from {}").format(answer, call)
        columns = sql.SQL(", ").join(sql.Identifier(n) for n, _ in given)
        # Types come from pg_catalog.format_type (schema-qualified), never from the request.
        typed = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in given
        )
        return sql.SQL(
            "select {answer} from (select %s::json as json_data) pgrst_payload,"
            " lateral (select {columns} from json_to_record(pgrst_payload.json_data)"
            " as _({typed}) limit 1) pgrst_body, lateral {call}"
        ).format(answer=answer, columns=columns, typed=typed, call=call)


ROUTINES = """
select p.proname, p.pronargs, p.pronargdefaults, p.provolatile, p.proretset,
       coalesce(p.proargnames, '{}') as names,
       coalesce(p.proargmodes::text[], '{}') as modes,
       array(select pg_catalog.format_type(a.t, null)
               from unnest(p.proargtypes::oid[]) with ordinality as a(t, i)
              order by a.i) as types,
       p.prorettype = 'record'::regtype or rt.typtype = 'c' as composite
  from pg_catalog.pg_proc p
  join pg_catalog.pg_namespace n on n.oid = p.pronamespace
  join pg_catalog.pg_type rt on rt.oid = p.prorettype
 where n.nspname = 'public' and p.proname = %s and p.prokind = 'f'
"""


def load_routines(conn: psycopg.Connection[Any], name: str) -> list[Routine]:
    with conn.transaction():
        # format_type qualifies every type outside pg_catalog then: no search_path games.
        conn.execute("set local search_path = pg_catalog")
        rows = conn.execute(ROUTINES, (name,)).fetchall()
    routines = []
    for proname, nargs, ndefaults, volatility, retset, names, modes, types, composite in rows:
        input_names = (
            [n for n, m in zip(names, modes, strict=False) if m in ("i", "b", "v")]
            if modes
            else list(names[:nargs])
        )
        if len(input_names) != nargs or not all(input_names):
            continue  # unnamed parameters: callable only with a single raw body, unused here
        params = tuple(zip(input_names, types, strict=True))
        routines.append(
            Routine(
                name=proname,
                params=params,
                required=frozenset(n for n, _ in params[: nargs - ndefaults]),
                volatile=volatility == "v",
                returns_set=retset,
                returns_composite=composite,
            )
        )
    return routines


# -- the service --------------------------------------------------------------------------


class PostgREST:
    """``/rest/v1``: RPC (POST) and table reads (GET with ``select`` and ``order``)."""

    def __init__(self, superuser_conninfo: str, secret: str, jwks: Jwks | None = None) -> None:
        self.conninfo = authenticator_conninfo(superuser_conninfo)
        self.secret = secret
        self.jwks = jwks
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.conninfo, autocommit=True, prepare_threshold=None)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def handle(self, request: httpx.Request, resource: str, token: str | None) -> httpx.Response:
        """``token``: the bearer token the API gateway passed on (None: anonymous)."""
        try:
            claims = verify_jwt(self.secret, token, self.jwks) if token is not None else {}
        except JwtRejected as rejected:
            return rejected.response()
        if resource.startswith("rpc/") and request.method == "POST":
            return self._call(request, resource.removeprefix("rpc/"), claims)
        if request.method == "GET" and resource and "/" not in resource:
            return self._read(request, resource, claims)
        return postgrest_error(405, "PGRST117", f"Unsupported HTTP method: {request.method}")

    def _call(self, request: httpx.Request, name: str, claims: Claims) -> httpx.Response:
        try:
            body = json.loads(request.content or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return postgrest_error(400, "PGRST102", "Empty or invalid json")
        keys = set(body)
        matches = [r for r in load_routines(self.conn, name) if r.accepts(keys)]
        if not matches:
            return postgrest_error(
                404,
                "PGRST202",
                f"Could not find the function public.{name}({', '.join(sorted(keys))})"
                " in the schema cache",
                "Perhaps you meant to call a different function.",
            )
        if len(matches) > 1:
            return postgrest_error(
                300, "PGRST203", f"Could not choose the best candidate function for {name}"
            )
        routine = matches[0]
        params = [json.dumps(body)] if any(n in keys for n, _ in routine.params) else []
        return self._run(
            request,
            f"/rpc/{name}",
            claims,
            routine.query(keys),
            params,
            read_only=not routine.volatile,
        )

    def _read(self, request: httpx.Request, table: str, claims: Claims) -> httpx.Response:
        query_params = request.url.params
        unknown = set(query_params) - {"select", "order"}
        if unknown:
            return postgrest_error(400, "PGRST100", f"Unsupported query parameters: {unknown}")
        exists = self.conn.execute(
            "select from pg_catalog.pg_class c"
            " join pg_catalog.pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = 'public' and c.relname = %s and c.relkind in ('r','v','m','f','p')",
            (table,),
        ).fetchone()
        if exists is None:
            return postgrest_error(
                404, "PGRST205", f"Could not find the table 'public.{table}' in the schema cache"
            )
        select = query_params.get("select", "*")
        columns = (
            sql.SQL("*")
            if select == "*"
            else sql.SQL(", ").join(sql.Identifier(c.strip()) for c in select.split(","))
        )
        query = sql.SQL("select {} from public.{}").format(columns, sql.Identifier(table))
        if query_params.get("order"):
            query += sql.SQL(" order by ") + sql.SQL(", ").join(
                _order_term(term) for term in query_params["order"].split(",")
            )
        wrapped = sql.SQL(
            "select coalesce(json_agg(_postgrest_t), '[]')::text from ({}) _postgrest_t"
        ).format(query)
        return self._run(request, f"/{table}", claims, wrapped, [], read_only=True)

    def _run(
        self,
        request: httpx.Request,
        path: str,
        claims: Claims,
        query: sql.Composed,
        params: list[Any],
        *,
        read_only: bool,
    ) -> httpx.Response:
        """One transaction, as PostgREST runs every request: scope, statement, answer."""
        role = str(claims.get("role") or ANON_ROLE)
        try:
            with self.conn.transaction(), self.conn.cursor() as cur:
                if read_only:
                    cur.execute("set transaction read only")
                enter_scope(cur, request, path, claims)
                cur.execute(query, params)
                row = cur.fetchone()
        except psycopg.Error as exc:
            return database_error(exc, role)
        assert row is not None
        return httpx.Response(
            200, content=row[0].encode(), headers={"Content-Type": "application/json"}
        )


def _order_term(term: str) -> sql.Composable:
    column, *modifiers = term.split(".")
    words = {"asc": "asc", "desc": "desc", "nullsfirst": "nulls first", "nullslast": "nulls last"}
    return sql.SQL(" ").join([sql.Identifier(column), *(sql.SQL(words[m]) for m in modifiers)])
