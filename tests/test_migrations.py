"""The migration runner: bootstrap, pending files in order, history rows like the CLI's."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from portraitkit.database.connection import connect
from portraitkit.database.migrations import (
    MigrationError,
    MigrationHistoryError,
    Migrator,
    local_migrations,
)
from portraitkit.database.schema_files import SchemaDirs, schema_dirs
from portraitkit.database.sqlsplit import split_statements

V1, V2, V3 = "20260101000000", "20260102000000", "20260103000000"


@pytest.fixture
def dirs(tmp_path: Path) -> SchemaDirs:
    (tmp_path / "sql").mkdir()
    (tmp_path / "migrations").mkdir()
    return SchemaDirs(bootstrap=tmp_path / "sql", migrations=tmp_path / "migrations")


def write(dirs: SchemaDirs, filename: str, sql: str) -> None:
    (dirs.migrations / filename).write_text(sql, encoding="utf-8")


def query(url: str, sql: str) -> list[tuple[object, ...]]:
    with connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql.encode())
        return cursor.fetchall() if cursor.description else []


def history(url: str) -> list[tuple[object, ...]]:
    return query(
        url,
        "select version, name, statements from supabase_migrations.schema_migrations "
        "order by version",
    )


def test_applies_pending_migrations_in_file_name_order(
    empty_database_url: str, dirs: SchemaDirs
) -> None:
    write(dirs, f"{V2}_second.sql", "insert into log values ('second');")
    write(
        dirs,
        f"{V1}_first.sql",
        "create table log (entry text, n serial);\ninsert into log values ('first');",
    )
    write(dirs, f"{V3}_third.sql", "insert into log values ('third');")

    applied = Migrator(empty_database_url, dirs=dirs).migrate()

    assert applied == [V1, V2, V3]
    assert query(empty_database_url, "select entry from log order by n") == [
        ("first",),
        ("second",),
        ("third",),
    ]


def test_records_version_name_and_statements_like_the_cli(
    empty_database_url: str, dirs: SchemaDirs
) -> None:
    sql = "-- make t\ncreate table t (x int);\n\ninsert into t values (1);\n"
    write(dirs, f"{V1}_make_t.sql", sql)

    Migrator(empty_database_url, dirs=dirs).migrate()

    assert history(empty_database_url) == [
        (V1, "make_t", ["-- make t\ncreate table t (x int)", "insert into t values (1)"])
    ]
    assert split_statements(sql) == [
        "-- make t\ncreate table t (x int)",
        "insert into t values (1)",
    ]


def test_history_table_has_the_cli_shape(empty_database_url: str, dirs: SchemaDirs) -> None:
    Migrator(empty_database_url, dirs=dirs).migrate()

    columns = query(
        empty_database_url,
        "select column_name, data_type, is_nullable from information_schema.columns "
        "where table_schema = 'supabase_migrations' and table_name = 'schema_migrations' "
        "order by ordinal_position",
    )
    assert columns == [
        ("version", "text", "NO"),
        ("statements", "ARRAY", "YES"),
        ("name", "text", "YES"),
    ]


def test_second_run_applies_nothing(empty_database_url: str, dirs: SchemaDirs) -> None:
    write(dirs, f"{V1}_t.sql", "create table t (x int);")
    migrator = Migrator(empty_database_url, dirs=dirs)
    migrator.migrate()

    assert migrator.migrate() == []
    assert len(history(empty_database_url)) == 1


def test_new_file_is_applied_on_the_next_run(empty_database_url: str, dirs: SchemaDirs) -> None:
    write(dirs, f"{V1}_t.sql", "create table t (x int);")
    migrator = Migrator(empty_database_url, dirs=dirs)
    migrator.migrate()
    write(dirs, f"{V2}_u.sql", "create table u (x int);")

    assert migrator.migrate() == [V2]


def test_broken_migration_rolls_back_the_file_and_its_history_row(
    empty_database_url: str, dirs: SchemaDirs
) -> None:
    write(dirs, f"{V1}_good.sql", "create table good (x int);")
    write(dirs, f"{V2}_broken.sql", "create table half (x int);\nselect 1/0;")
    write(dirs, f"{V3}_later.sql", "create table later (x int);")

    with pytest.raises(MigrationError) as failure:
        Migrator(empty_database_url, dirs=dirs).migrate()

    assert failure.value.version == V2
    assert "division by zero" in str(failure.value)
    assert [row[0] for row in history(empty_database_url)] == [V1]
    assert query(
        empty_database_url,
        "select to_regclass('half') is null, to_regclass('later') is null",
    ) == [(True, True)]


def test_fixed_migration_applies_after_a_failure(empty_database_url: str, dirs: SchemaDirs) -> None:
    write(dirs, f"{V1}_broken.sql", "select 1/0;")
    migrator = Migrator(empty_database_url, dirs=dirs)
    with pytest.raises(MigrationError):
        migrator.migrate()
    write(dirs, f"{V1}_broken.sql", "select 1;")

    assert migrator.migrate() == [V1]


def test_version_recorded_but_missing_locally_is_reported(
    empty_database_url: str, dirs: SchemaDirs
) -> None:
    write(dirs, f"{V1}_t.sql", "create table t (x int);")
    migrator = Migrator(empty_database_url, dirs=dirs)
    migrator.migrate()
    query(
        empty_database_url,
        "insert into supabase_migrations.schema_migrations (version, name) "
        "values ('20250101000000', 'elsewhere')",
    )
    write(dirs, f"{V2}_u.sql", "create table u (x int);")

    with pytest.raises(MigrationHistoryError) as failure:
        migrator.migrate()

    assert failure.value.missing == ["20250101000000"]
    assert query(empty_database_url, "select to_regclass('u') is null") == [(True,)]
    assert migrator.status().missing_locally == ["20250101000000"]


def test_files_not_named_like_cli_migrations_are_skipped(
    empty_database_url: str, dirs: SchemaDirs
) -> None:
    write(dirs, f"{V1}_t.sql", "create table t (x int);")
    write(dirs, "notes.sql", "this is not sql;")
    write(dirs, f"{V2}-dash.sql", "neither;")
    write(dirs, f"{V3}_t.txt", "nor this;")

    assert [m.version for m in local_migrations(dirs.migrations)] == [V1]
    assert Migrator(empty_database_url, dirs=dirs).migrate() == [V1]


def test_session_settings_do_not_leak_into_the_next_file(
    empty_database_url: str, dirs: SchemaDirs
) -> None:
    write(dirs, f"{V1}_set.sql", "set application_name = 'leaked';")
    write(
        dirs,
        f"{V2}_read.sql",
        "create table seen as select current_setting('application_name') as v;",
    )

    Migrator(empty_database_url, dirs=dirs).migrate()

    assert query(empty_database_url, "select v from seen") == [("portraitkit",)]


def test_status_lists_applied_and_pending(empty_database_url: str, dirs: SchemaDirs) -> None:
    write(dirs, f"{V1}_a.sql", "select 1;")
    migrator = Migrator(empty_database_url, dirs=dirs)
    migrator.migrate()
    write(dirs, f"{V2}_b.sql", "select 2;")

    status = migrator.status()

    assert [(m.version, m.name, m.applied) for m in status.migrations] == [
        (V1, "a", True),
        (V2, "b", False),
    ]
    assert [m.version for m in status.pending] == [V2]
    assert status.server_version.startswith("18")
    assert status.is_supabase is False


def test_status_of_a_database_never_migrated(empty_database_url: str, dirs: SchemaDirs) -> None:
    write(dirs, f"{V1}_a.sql", "select 1;")

    status = Migrator(empty_database_url, dirs=dirs).status()

    assert [(m.version, m.applied) for m in status.migrations] == [(V1, False)]
    assert query(empty_database_url, "select to_regnamespace('supabase_migrations')") == [(None,)]


def test_bootstrap_runs_in_name_order_on_plain_postgres(
    empty_database_url: str, dirs: SchemaDirs
) -> None:
    (dirs.bootstrap / "02_b.sql").write_text("insert into boot values ('b');")
    (dirs.bootstrap / "01_a.sql").write_text(
        "create table if not exists boot (v text); insert into boot values ('a');"
    )

    Migrator(empty_database_url, dirs=dirs).migrate()

    assert query(empty_database_url, "select v from boot") == [("a",), ("b",)]


def test_bootstrap_is_skipped_on_a_supabase_database(
    empty_database_url: str, dirs: SchemaDirs
) -> None:
    (dirs.bootstrap / "01_a.sql").write_text("create table boot (v text);")
    # Roles are cluster-wide: create the marker role for this test only.
    query(empty_database_url, "create role supabase_admin nologin")
    try:
        migrator = Migrator(empty_database_url, dirs=dirs)
        migrator.migrate()
        assert migrator.status().is_supabase is True
    finally:
        query(empty_database_url, "drop role supabase_admin")

    assert query(empty_database_url, "select to_regclass('boot') is null") == [(True,)]


@pytest.mark.parametrize("attempt", range(3))
def test_concurrent_migrators_apply_each_file_once(
    attempt: int, empty_database_url: str, dirs: SchemaDirs
) -> None:
    for n, version in enumerate([V1, V2, V3]):
        write(dirs, f"{version}_m{n}.sql", f"create table m{n} (x int); select pg_sleep(0.02);")
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(Migrator(empty_database_url, dirs=dirs).migrate())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(v for applied in results for v in applied) == [V1, V2, V3]
    assert [row[0] for row in history(empty_database_url)] == [V1, V2, V3]


def test_repository_schema_is_fully_applied(database_url: str) -> None:
    status = Migrator(database_url).status()

    assert status.pending == []
    assert status.missing_locally == []
    assert [m.version for m in status.migrations] == [
        m.version for m in local_migrations(schema_dirs().migrations)
    ]


RELEASED = Path(__file__).parent / "data" / "release_1"
# A statement that locks a table other parts of a Supabase project use: a trigger on
# auth.users (every sign-up waits on it), a policy or index on storage.objects.
SHARED_TABLE_DDL = r"\b(on|alter\s+table|lock\s+table)\s+(only\s+)?(auth\.users|storage\.objects)\b"


def test_released_migrations_are_never_edited() -> None:
    """`supabase db push` compares versions only: an edited file never reaches a project."""
    current = schema_dirs().migrations
    for released in sorted(RELEASED.glob("*.sql")):
        assert (current / released.name).read_text() == released.read_text(), released.name


def test_later_migrations_set_a_lock_timeout_before_locking_shared_tables() -> None:
    released = {p.name for p in RELEASED.glob("*.sql")}
    for path in sorted(schema_dirs().migrations.glob("*.sql")):
        if path.name in released:
            continue
        text = path.read_text()
        first = re.search(SHARED_TABLE_DDL, text, re.IGNORECASE)
        if first is not None:
            timeout = re.search(r"set\s+(local\s+)?lock_timeout", text[: first.start()], re.I)
            assert timeout is not None, f"{path.name} locks a shared table with no lock_timeout"
