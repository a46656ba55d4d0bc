"""`portraitkit gen types typescript`: the app's types, from the migrated database.

What is shown:
- the output compiles with `tsc --strict` together with tests/data/typescript/app.ts, a file
  that uses it the way the app does (rows, `rpc('create_generation_batch', args)`, `Json`,
  `ErrorCode`), and a wrong usage does not compile;
- its `Database` part is, byte for byte, what `supabase gen types typescript` prints: the CLI
  runs postgres-meta's generator (v0.96.6) in Docker; here the same npm package runs in Node
  against the same database, with the settings the CLI passes for our config.toml;
- the CLI command writes that text to a file or to stdout.

`typescript` and `@supabase/postgres-meta` are installed with npm once per machine into
~/.cache/portraitkit/<package>/<version> (a lock keeps parallel runs from racing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from portraitkit_cli.app import app
from typer.testing import CliRunner

from portraitkit.database.connection import connect
from portraitkit.typescript import collation_key, generate
from tests.npm import npm_install

TYPESCRIPT_VERSION = "7.0.2"
POSTGRES_META_VERSION = "0.96.6"  # the image the Supabase CLI runs for `gen types`
APP_USAGE = Path(__file__).parent / "data" / "typescript" / "app.ts"
RUN_TIMEOUT = 120

# Each line a mistake the types must catch (line numbers are asserted below).
WRONG_USAGE = """\
import type { Database, ErrorCode, Generation } from "./database.types"
export const batchId: Generation["batch_id"] = 42
export const args: Database["public"]["Functions"]["create_generation_batch"]["Args"] = { source_image_path: "a.png" }
export const code: ErrorCode = "no_such_code"
export const status: Database["public"]["Enums"]["batch_status"] = "done"
"""


@pytest.fixture(scope="session")
def tsc() -> Path:
    """The `tsc` of the pinned TypeScript."""
    entry = Path("node_modules") / ".bin" / "tsc"
    prefix = npm_install("typescript", TYPESCRIPT_VERSION, ready=lambda p: (p / entry).is_file())
    version = subprocess.run(
        [str(prefix / entry), "--version"], capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert version.stdout.strip() == f"Version {TYPESCRIPT_VERSION}", version.stdout
    return prefix / entry


@pytest.fixture(scope="session")
def postgres_meta() -> Path:
    """postgres-meta's server script, which prints the types and exits when asked to."""
    package = Path("node_modules") / "@supabase" / "postgres-meta"
    prefix = npm_install(
        "@supabase/postgres-meta",
        POSTGRES_META_VERSION,
        ready=lambda p: (p / package / "package.json").is_file(),
    )
    return prefix / package / "dist" / "server" / "server.js"


@pytest.fixture(scope="module")
def generated(db_url: str) -> str:
    with connect(db_url, autocommit=True) as conn:
        return generate(conn)


@pytest.fixture
def project(tmp_path: Path, generated: str) -> Path:
    """A folder with the generated module as ./database.types.ts, as the app keeps it."""
    (tmp_path / "database.types.ts").write_text(generated, encoding="utf-8")
    return tmp_path


def _compile(tsc: Path, project: Path, *files: str) -> subprocess.CompletedProcess[str]:
    # No DOM library, and the standard library's .d.ts taken as checked: a sixth of the time.
    # Our .ts files are checked in full.
    options = ["--strict", "--noEmit", "--pretty", "false", "--lib", "es2022", "--skipLibCheck"]
    return subprocess.run(
        [str(tsc), *options, *files, "database.types.ts"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def test_the_apps_usage_compiles_with_strict_typescript(tsc: Path, project: Path) -> None:
    shutil.copy(APP_USAGE, project / "app.ts")

    done = _compile(tsc, project, "app.ts")

    assert done.returncode == 0, done.stdout + done.stderr


def test_wrong_usage_does_not_compile(tsc: Path, project: Path) -> None:
    (project / "wrong.ts").write_text(WRONG_USAGE, encoding="utf-8")

    done = _compile(tsc, project, "wrong.ts")

    assert done.returncode != 0
    errors = [line for line in done.stdout.splitlines() if ": error TS" in line]
    assert [line.split(":")[0] for line in errors] == [
        "wrong.ts(2,14)",  # batch_id is a string
        "wrong.ts(3,14)",  # style_keys is required
        "wrong.ts(4,14)",  # not an error code
        "wrong.ts(5,14)",  # not a batch status
    ], done.stdout


def _pg_url(conninfo: str) -> str:
    """The URL form node-postgres wants: percent-encoded, TCP, no TLS (a local server)."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = quote(str(params.get("user") or "postgres"), safe="")
    password = params.get("password")
    auth = f"{user}:{quote(str(password), safe='')}" if password else user
    host, port = params.get("host") or "127.0.0.1", params.get("port") or 5432
    return f"postgresql://{auth}@{host}:{port}/{quote(str(params['dbname']), safe='')}"


def test_database_type_is_what_the_supabase_cli_prints(
    postgres_meta: Path, db_url: str, generated: str
) -> None:
    # What `supabase gen types typescript --db-url ...` hands to postgres-meta: the schemas
    # of config.toml's [api] (graphql_public does not exist here) and one-to-one detection.
    env = {
        **os.environ,
        "PG_META_DB_URL": _pg_url(db_url),
        "PG_META_GENERATE_TYPES": "typescript",
        "PG_META_GENERATE_TYPES_INCLUDED_SCHEMAS": "public,graphql_public",
        "PG_META_GENERATE_TYPES_DETECT_ONE_TO_ONE_RELATIONSHIPS": "true",
    }
    node = shutil.which("node") or pytest.skip("node is not installed")

    done = subprocess.run(
        [node, str(postgres_meta)],
        cwd=postgres_meta.parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )

    assert done.returncode == 0, done.stderr
    assert "      create_generation_batch: {\n" in done.stdout
    assert generated[: len(done.stdout)] == done.stdout
    assert generated[len(done.stdout) :].startswith("// portraitkit: ")


def test_names_sort_as_javascript_locale_compare() -> None:
    names = ["b", "B", "a_b", "a-b", "ab", "A", "a1", "a", "ü", "u", "v", "Ab", "_x", "x2", "x10"]

    # The order Node prints for names.sort((x, y) => x.localeCompare(y)).
    assert sorted(names, key=collation_key) == [
        "_x",
        "a",
        "A",
        "a_b",
        "a-b",
        "a1",
        "ab",
        "Ab",
        "b",
        "B",
        "u",
        "ü",
        "v",
        "x10",
        "x2",
    ]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db_url: str) -> list[str]:
    """The CLI's global options for the module's database; no other one from the environment
    or a .env file."""
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "SUPABASE_URL", "SUPABASE_ANON_KEY", "PORTRAITKIT_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    return ["--database-url", db_url, "--state-dir", str(tmp_path / "state")]


def test_cli_writes_the_types_to_a_file(cli: list[str], generated: str, tmp_path: Path) -> None:
    target = tmp_path / "database.types.ts"

    result = CliRunner().invoke(app, [*cli, "gen", "types", "typescript", "--output", str(target)])

    assert result.exit_code == 0, result.output
    assert target.read_text(encoding="utf-8") == generated


def test_cli_prints_the_types_without_output_file(cli: list[str], generated: str) -> None:
    result = CliRunner().invoke(app, [*cli, "gen", "types", "typescript"])

    assert result.exit_code == 0, result.output
    assert result.stdout == generated
