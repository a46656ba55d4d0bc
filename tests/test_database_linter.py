"""Supabase's database linter (splinter) has nothing to warn about in portraitkit's schema.

splinter is the set of lint queries behind the Supabase dashboard's Security and Performance
Advisors. We run it as `postgrestools dblint`, the Postgres Language Server CLI (npm package
`@postgrestools/postgrestools`), which carries splinter's queries and runs them against a live
database. It is installed once per machine into ~/.cache/portraitkit/postgrestools/<version>
with npm, like the Supabase CLI in test_supabase_cli.py; nothing of it lives in this repository.

What is shown:
- a freshly migrated database has no WARN or ERROR finding on our objects;
- no SECURITY DEFINER function in an exposed schema is executable by `anon` or
  `authenticated` (splinter lints 0028/0029, which no linter release on npm carries yet);
- the harness can fail: deliberately bad objects in a scratch database are reported.

Why not the Supabase CLI: `supabase db lint` runs plpgsql_check, not splinter, and
`supabase db advisors` (2.117.0 and 3.1.0) embeds the same older rule set as this release.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from portraitkit.database.embedded import EmbeddedPostgres
from portraitkit.database.migrations import Migrator
from portraitkit.database.schema_files import schema_dirs
from tests.npm import npm_install

PACKAGE = "@postgrestools/postgrestools"
LINTER_VERSION = "0.25.7"  # the newest on npm (its splinter rules: lints 0001-0024)
LINTER_TIMEOUT = 120

# Our objects: the schemas the migrations create, and the Storage policies they add
# (`portraits_*` on storage.objects). Findings elsewhere are not ours to fix: `auth` and the
# roles come from sql/01_supabase_compat.sql, a stand-in for what Supabase provides, and
# `supabase_migrations` is the CLI's history table. splinter skips the `storage` and `auth`
# schemas in every lint, and a plain PostgreSQL has no Storage (the bucket migration skips
# its policies here), so the storage clause waits for a linter that looks there. Extension
# lints are kept: neither the shim nor the migrations create an extension.
OUR_SCHEMAS = frozenset({"public", "private"})
OUR_STORAGE_PREFIX = "portraits"
FAILING_LEVELS = frozenset({"WARN", "ERROR"})


@dataclass(frozen=True)
class Finding:
    """One lint result: its level, rule, the objects its message names, and the message."""

    level: str  # ERROR, WARN or INFO, as splinter names them
    rule: str  # e.g. splinter/security/functionSearchPathMutable
    message: str
    objects: tuple[tuple[str, str], ...]  # (schema, name) pairs named in the message

    @property
    def ours(self) -> bool:
        # A message naming no schema-qualified object is kept: better a look than a miss.
        if not self.objects:
            return True
        return any(
            schema in OUR_SCHEMAS or (schema == "storage" and OUR_STORAGE_PREFIX in self.message)
            for schema, _ in self.objects
        )

    def __str__(self) -> str:
        return f"{self.level:<5} {self.rule}\n      {self.message}"


def failing(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level in FAILING_LEVELS and f.ours]


def report(title: str, findings: list[Finding], *, ignored: int = 0) -> str:
    lines = [f"{title}: {len(findings)}", *(str(f) for f in findings)]
    if ignored:
        lines.append(f"({ignored} WARN/ERROR finding(s) on objects that are not ours ignored)")
    return "\n".join(lines)


# The linter's JSON has no object field (only severity, category, message); the message names
# the object as `schema.name`, `schema`.`name`, or "name" in the <schema> schema.
_QUALIFIED = [
    re.compile(r"`([A-Za-z_][\w$]*)\.([A-Za-z_][\w$]*)`"),
    re.compile(r"`([^`]+)`\.`([^`]+)`"),
]
_IN_SCHEMA = re.compile(r"[`\"]([^`\"]+)[`\"] (?:is installed )?in the ([A-Za-z_]\w*) schema")
_LEVELS = {"error": "ERROR", "fatal": "ERROR", "warning": "WARN", "info": "INFO"}


def named_objects(message: str) -> tuple[tuple[str, str], ...]:
    text = message.replace("\\`", "`")
    found = [m.groups() for pattern in _QUALIFIED for m in pattern.finditer(text)]
    found += [(schema, name) for name, schema in _IN_SCHEMA.findall(text)]
    return tuple(dict.fromkeys((str(s), str(n)) for s, n in found))


# --- the linter, installed once per machine --------------------------------------------------


def _installed_version(entry: Path) -> str | None:
    if not entry.exists():
        return None
    try:
        done = subprocess.run(
            [str(entry), "--version"], capture_output=True, text=True, timeout=LINTER_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip().removeprefix("Version:").strip()  # prints "Version: 0.25.7"


@pytest.fixture(scope="session")
def linter() -> Path:
    """The `postgrestools` command of the pinned version, installed with npm on first use."""
    entry = Path("node_modules") / ".bin" / "postgrestools"
    ready = lambda prefix: _installed_version(prefix / entry) == LINTER_VERSION  # noqa: E731
    return npm_install(PACKAGE, LINTER_VERSION, ready=ready, name="postgrestools") / entry


# Only the database linter, with every splinter rule at its own level; no config file of
# the checkout (there is none today) or of a parent folder is read (--config-path).
LINTER_CONFIG = {
    "linter": {"enabled": False},
    "splinter": {"enabled": True, "rules": {"all": True}},
    "pglinter": {"enabled": False},  # a separate extension we do not install
}


def _url(conninfo: str) -> str:
    """The URL form the linter reads from DATABASE_URL: percent-encoded, TCP, no TLS."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = quote(str(params.get("user") or "postgres"), safe="")
    password = params.get("password")
    auth = f"{user}:{quote(str(password), safe='')}" if password else user
    host = str(params.get("host") or "127.0.0.1")
    port = str(params.get("port") or 5432)
    dbname = quote(str(params.get("dbname") or "postgres"), safe="")
    return f"postgresql://{auth}@{host}:{port}/{dbname}?sslmode=disable"


def run_linter(linter: Path, conninfo: str, workdir: Path) -> list[Finding]:
    """Every finding of one `postgrestools dblint` run on the database.

    Options and config keys: postgres-language-server docs/features/database_linting.md and
    `postgrestools dblint --help`; the JSON shape is what 0.25.7 prints.
    """
    config = workdir / "postgres-language-server.jsonc"
    config.write_text(json.dumps(LINTER_CONFIG, indent=2), encoding="utf-8")
    # The database comes from DATABASE_URL (kept out of the process list); no ambient
    # PGHOST and the like may point it elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "DATABASE_URL"}
    env["DATABASE_URL"] = _url(conninfo)
    done = subprocess.run(
        [
            str(linter),
            "dblint",
            f"--config-path={config}",
            "--reporter=json",
            "--max-diagnostics=none",  # the default shows only 20
            "--colors=off",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=LINTER_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    # Exit 0: no error-level finding; 1: some, or the linter itself failed (then stdout
    # has no JSON, and stderr says why, e.g. a `database/connection` diagnostic).
    try:
        output = json.loads(done.stdout)
        diagnostics = output["diagnostics"]
    except (json.JSONDecodeError, KeyError, TypeError):
        pytest.fail(f"dblint did not report (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    findings = [
        Finding(
            level=_LEVELS.get(d["severity"], str(d["severity"]).upper()),
            rule=d["category"],
            message=d["message"].replace("\\`", "`"),
            objects=named_objects(d["message"]),
        )
        for d in diagnostics
    ]
    others = [f for f in findings if not f.rule.startswith("splinter/")]
    assert not others, report("dblint reported something other than splinter lints", others)
    if done.returncode != 0:
        assert any(f.level == "ERROR" for f in findings), (
            f"dblint failed (exit {done.returncode}) with no error finding:\n{done.stderr}"
        )
    return findings


# --- databases -------------------------------------------------------------------------------


def exposed_schemas() -> list[str]:
    """The schemas PostgREST serves ([api] schemas in supabase/config.toml)."""
    config = schema_dirs().migrations.parent / "config.toml"
    if not config.is_file():
        return ["public", "graphql_public"]  # the Supabase default
    return list(tomllib.loads(config.read_text(encoding="utf-8"))["api"]["schemas"])


@contextmanager
def migrated_database(pg_server: EmbeddedPostgres, label: str) -> Iterator[str]:
    """A new database with sql/ and every migration, as a plain PostgreSQL gets them."""
    server_url = pg_server.ensure_running()
    name = f"t_linter_{label}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        # splinter's API lints (RLS disabled in public, exposed views, ...) look only at the
        # schemas in `pgrst.db_schemas`, which Supabase sets for PostgREST; unset, they
        # silently find nothing (supabase/cli#5868). Set as on a project with our config.
        admin.execute(
            sql.SQL("alter database {} set pgrst.db_schemas = {}").format(
                sql.Identifier(name), sql.Literal(", ".join(exposed_schemas()))
            )
        )
    conninfo = psycopg.conninfo.make_conninfo(server_url, dbname=name)
    try:
        Migrator(conninfo, bootstrap=True).migrate()
        yield conninfo
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="module")
def migrated_url(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """Our schema alone: no other test's objects or data."""
    with migrated_database(pg_server, "main") as conninfo:
        yield conninfo


@pytest.fixture
def scratch_url(pg_server: EmbeddedPostgres) -> Iterator[str]:
    with migrated_database(pg_server, "scratch") as conninfo:
        yield conninfo


@pytest.fixture(scope="module")
def findings(
    linter: Path, migrated_url: str, tmp_path_factory: pytest.TempPathFactory
) -> list[Finding]:
    """One linter run over the migrated database, shared by the module."""
    return run_linter(linter, migrated_url, tmp_path_factory.mktemp("dblint"))


# --- lints 0028/0029, which the linter release does not have yet -----------------------------

# Our own query for splinter's lints 0028/0029 as their documentation defines them (a
# SECURITY DEFINER function in an exposed schema that `anon` / `authenticated` may execute:
# callable at /rest/v1/rpc/<name>, bypassing RLS). postgrestools 0.25.7 predates them; drop
# this once the pinned linter reports them itself.
DEFINER_EXECUTABLE = """
    select api.lint, n.nspname, p.proname,
           pg_catalog.pg_get_function_identity_arguments(p.oid), api.role
    from pg_catalog.pg_proc p
    join pg_catalog.pg_namespace n on n.oid = p.pronamespace
    cross join (values ('0028_anon_security_definer_function_executable', 'anon'),
                       ('0029_authenticated_security_definer_function_executable',
                        'authenticated')) as api (lint, role)
    where p.prosecdef
      and n.nspname = any(%s)
      and pg_catalog.has_function_privilege(api.role, p.oid, 'EXECUTE')
    order by 2, 3, 4, 1
"""


def definer_functions_callable_from_api(conninfo: str) -> list[Finding]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(DEFINER_EXECUTABLE, [exposed_schemas()]).fetchall()
    return [
        Finding(
            level="WARN",
            rule=f"portraitkit/{lint}",
            message=(
                f"SECURITY DEFINER function `{schema}.{name}({args})` is executable by `{role}`"
            ),
            objects=((schema, name),),
        )
        for lint, schema, name, args, role in rows
    ]


# --- the tests -------------------------------------------------------------------------------


def test_linter_finds_no_warning_on_our_objects(findings: list[Finding]) -> None:
    bad = failing(findings)
    ignored = sum(1 for f in findings if f.level in FAILING_LEVELS and not f.ours)
    assert bad == [], report("WARN/ERROR findings on portraitkit's objects", bad, ignored=ignored)


def test_no_definer_function_in_the_api_is_executable_by_api_roles(migrated_url: str) -> None:
    bad = failing(definer_functions_callable_from_api(migrated_url))
    assert bad == [], report("SECURITY DEFINER functions callable through the API", bad)


# Mistakes each rule above must catch, made the way they happen: the shim's default
# privileges (Supabase's) grant the API roles everything new in public.
BAD_OBJECTS = """
    -- RLS off on a table the API roles can read (lint 0013, ERROR).
    create table public.lint_probe_open (id bigint primary key, note text);
    grant select on public.lint_probe_open to anon, authenticated;
    -- A function whose search_path the caller controls (lint 0011, WARN).
    create function public.lint_probe_mutable_path() returns integer
    language sql as 'select 1';
    -- A policy re-evaluating auth.uid() for every row (lint 0003, WARN).
    create table public.lint_probe_owned (id bigint primary key, owner uuid);
    alter table public.lint_probe_owned enable row level security;
    create policy lint_probe_own on public.lint_probe_owned
      for select to authenticated using (owner = auth.uid());
    -- A definer function anyone may call through /rpc (lints 0028 and 0029).
    create function public.lint_probe_escalate() returns integer
    language sql security definer set search_path = '' as 'select 1';
"""


def test_harness_reports_deliberately_bad_objects(
    linter: Path, scratch_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        conn.execute(BAD_OBJECTS.encode())

    found = run_linter(linter, scratch_url, tmp_path)
    found += definer_functions_callable_from_api(scratch_url)

    reported = {(f.rule, obj) for f in failing(found) for obj in f.objects}
    expected = {
        ("splinter/security/rlsDisabledInPublic", ("public", "lint_probe_open")),
        ("splinter/security/functionSearchPathMutable", ("public", "lint_probe_mutable_path")),
        ("splinter/performance/authRlsInitplan", ("public", "lint_probe_owned")),
        (
            "portraitkit/0028_anon_security_definer_function_executable",
            ("public", "lint_probe_escalate"),
        ),
        (
            "portraitkit/0029_authenticated_security_definer_function_executable",
            ("public", "lint_probe_escalate"),
        ),
    }
    assert expected <= reported, report("what was reported", failing(found))
