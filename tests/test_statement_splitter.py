"""The splitter fills `statements` exactly as the Supabase CLI's SplitAndTrim would."""

from __future__ import annotations

from portraitkit.database.sqlsplit import split_statements


def test_splits_on_semicolons_and_trims() -> None:
    assert split_statements("select 1;\n  select 2 ;\n") == ["select 1", "select 2"]


def test_last_statement_needs_no_semicolon() -> None:
    assert split_statements("select 1; select 2") == ["select 1", "select 2"]


def test_empty_statements_are_dropped() -> None:
    assert split_statements(";;\n ; select 1;;") == ["select 1"]


def test_empty_script_has_no_statements() -> None:
    assert split_statements("") == []
    assert split_statements("  \n\t") == []


def test_semicolon_in_single_quotes() -> None:
    assert split_statements("select 'a;b'; select 'it''s;';") == [
        "select 'a;b'",
        "select 'it''s;'",
    ]


def test_semicolon_in_escape_string_with_backslash_quote() -> None:
    assert split_statements(r"select E'a\';b'; select 2") == [r"select E'a\';b'", "select 2"]


def test_backslash_in_standard_string_is_not_an_escape() -> None:
    assert split_statements("select 'a\\'; select 2") == ["select 'a\\'", "select 2"]


def test_identifier_ending_in_e_does_not_start_escape_string() -> None:
    assert split_statements("select some'\\'; select 2") == ["select some'\\'", "select 2"]


def test_semicolon_in_double_quoted_identifier() -> None:
    assert split_statements('create table "a;b" ("x""; y" int); select 1') == [
        'create table "a;b" ("x""; y" int)',
        "select 1",
    ]


def test_semicolon_in_dollar_quotes() -> None:
    body = "create function f() returns void language plpgsql as $$ begin perform 1; end $$"
    assert split_statements(body + "; select 1;") == [body, "select 1"]


def test_semicolon_in_tagged_dollar_quotes_containing_plain_dollars() -> None:
    body = "do $fn$ begin execute $$select 1;$$; end $fn$"
    assert split_statements(body + ";select 2") == [body, "select 2"]


def test_positional_parameter_is_not_a_dollar_quote() -> None:
    sql = "prepare p as select $1; select 2"
    assert split_statements(sql) == ["prepare p as select $1", "select 2"]


def test_dollar_inside_identifier_is_not_a_dollar_quote() -> None:
    assert split_statements("select a$b$ from t; select 2") == ["select a$b$ from t", "select 2"]


def test_line_comment_is_kept_with_following_statement() -> None:
    assert split_statements("-- first; not a split\nselect 1;") == [
        "-- first; not a split\nselect 1"
    ]


def test_block_comments_nest() -> None:
    sql = "/* outer /* inner; */ still; */ select 1; select 2"
    assert split_statements(sql) == ["/* outer /* inner; */ still; */ select 1", "select 2"]


def test_trailing_comment_is_its_own_statement_like_the_cli() -> None:
    assert split_statements("select 1;\n-- done\n") == ["select 1", "-- done"]


def test_semicolon_inside_parentheses() -> None:
    sql = "create rule r as on insert to t do also (insert into a values (1); delete from b)"
    assert split_statements(sql + "; select 1") == [sql, "select 1"]


def test_begin_atomic_body_is_one_statement() -> None:
    sql = (
        "create function f() returns int language sql\n"
        "begin atomic\n  select 1;\n  select case when true then 2 else 3 end;\nend"
    )
    assert split_statements(sql + ";\nselect 4;") == [sql, "select 4"]


def test_transaction_begin_is_not_atomic() -> None:
    assert split_statements("begin; select 1; commit;") == ["begin", "select 1", "commit"]


def test_unterminated_quote_keeps_the_rest_as_one_statement() -> None:
    assert split_statements("select 1; select 'oops; select 2") == [
        "select 1",
        "select 'oops; select 2",
    ]
