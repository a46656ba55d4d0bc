"""Split a SQL script into statements the way the Supabase CLI records them.

The runner executes each migration file whole; this split only fills the `statements`
column of `supabase_migrations.schema_migrations`, so a database migrated by portraitkit
reads the same to the Supabase CLI (its pkg/parser `SplitAndTrim`). Like the CLI, each
statement keeps its text and comments as written, loses its trailing `;` and surrounding
whitespace, and empty statements are dropped.

A `;` ends a statement only outside quotes ('...', E'...', "..."), dollar quotes ($$, $tag$),
comments (-- and nested /* */), parentheses, and SQL-standard `BEGIN ATOMIC ... END` bodies.
"""

from __future__ import annotations

from collections.abc import Iterator


def split_statements(sql: str) -> list[str]:
    """Return the statements of `sql`, trimmed as the Supabase CLI stores them."""
    statements: list[str] = []
    start = 0
    for end in _statement_ends(sql):
        _append_trimmed(statements, sql[start:end])
        start = end + 1
    _append_trimmed(statements, sql[start:])
    return statements


def _append_trimmed(statements: list[str], piece: str) -> None:
    text = piece.rstrip(";").strip()
    if text:
        statements.append(text)


def _is_ident_char(char: str) -> bool:
    return char.isalnum() or char in "_$"


def _statement_ends(sql: str) -> Iterator[int]:
    """Yield the index of every `;` that ends a statement."""
    scanner = _Scanner(sql)
    while scanner.pos < len(sql):
        if scanner.step():
            yield scanner.pos - 1


class _Scanner:
    """Walks the script one token at a time, tracking nesting that hides a `;`."""

    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.pos = 0
        self.parens = 0
        self.atomic = False  # inside BEGIN ATOMIC ... END
        self.case_depth = 0  # CASE ... END inside an atomic body
        self.last_word = ""

    def step(self) -> bool:
        """Consume one token; True when it was a statement-ending `;`."""
        sql, i = self.sql, self.pos
        char, pair = sql[i], sql[i : i + 2]
        if pair == "--":
            self.pos = _skip_line_comment(sql, i)
        elif pair == "/*":
            self.pos = _skip_block_comment(sql, i)
        elif char == "'":
            self.pos = _skip_quoted(sql, i, "'", backslash=self._escape_string_prefix(i))
        elif char == '"':
            self.pos = _skip_quoted(sql, i, '"', backslash=False)
        elif char == "$" and (i == 0 or not _is_ident_char(sql[i - 1])):
            self.pos = _skip_dollar_quote(sql, i)
        elif char.isalpha() or char == "_":
            self._word(i)
        elif char == "(":
            self.parens += 1
            self.pos = i + 1
        elif char == ")":
            self.parens = max(0, self.parens - 1)
            self.pos = i + 1
        else:
            self.pos = i + 1
            if not char.isspace():
                self.last_word = ""  # BEGIN and ATOMIC must be adjacent words
            return char == ";" and self.parens == 0 and not self.atomic
        return False

    def _escape_string_prefix(self, quote: int) -> bool:
        """E'...' strings treat backslash as an escape; 'E' must be a word of its own."""
        if quote == 0 or self.sql[quote - 1] not in "eE":
            return False
        return quote == 1 or not _is_ident_char(self.sql[quote - 2])

    def _word(self, start: int) -> None:
        end = start
        while end < len(self.sql) and _is_ident_char(self.sql[end]):
            end += 1
        word = self.sql[start:end].upper()
        if word == "ATOMIC" and self.last_word == "BEGIN" and not self.atomic:
            self.atomic, self.case_depth = True, 0
        elif self.atomic and word == "CASE":
            self.case_depth += 1
        elif self.atomic and word == "END" and self.parens == 0:
            if self.case_depth:
                self.case_depth -= 1
            else:
                self.atomic = False
        self.last_word = word
        self.pos = end


def _skip_line_comment(sql: str, start: int) -> int:
    newline = sql.find("\n", start)
    return len(sql) if newline < 0 else newline + 1


def _skip_block_comment(sql: str, start: int) -> int:
    """Block comments nest in PostgreSQL: /* a /* b */ still a comment */."""
    depth, i = 0, start
    while i < len(sql):
        pair = sql[i : i + 2]
        if pair == "/*":
            depth, i = depth + 1, i + 2
        elif pair == "*/":
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    return len(sql)


def _skip_quoted(sql: str, start: int, quote: str, *, backslash: bool) -> int:
    """Skip '...' or "..."; a doubled quote is an escaped quote."""
    i = start + 1
    while i < len(sql):
        char = sql[i]
        if backslash and char == "\\":
            i += 2
        elif char == quote:
            if sql[i + 1 : i + 2] == quote:
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return len(sql)


def _skip_dollar_quote(sql: str, start: int) -> int:
    """Skip $tag$...$tag$; a lone `$` (as in $1) is not a quote."""
    i = start + 1
    if i < len(sql) and (sql[i].isalpha() or sql[i] == "_"):
        while i < len(sql) and (sql[i].isalnum() or sql[i] == "_"):
            i += 1
    if i >= len(sql) or sql[i] != "$":
        return start + 1
    tag = sql[start : i + 1]
    close = sql.find(tag, i + 1)
    return len(sql) if close < 0 else close + len(tag)
