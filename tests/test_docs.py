"""The shell commands in README.md and docs/supabase.md are ones that work.

A shell block (fenced with no language, `sh`, `bash`, `shell` or `console`) either starts
with the line `# needs a Supabase project`, or every command in it is one the test suite
runs: `EXERCISED` names, for each, the test that runs it (an HTTP request counts when a
test sends the same request to the app), or the script that runs it word for word
(`.ci/run`). A command missing from `EXERCISED`, an entry no page uses any more, and an
entry whose test is gone all fail.

Whatever the marker, every `portraitkit` and `supabase` command in those blocks names
subcommands and flags that the program's own `--help` shows (the Supabase CLI pinned in
tests/test_supabase_cli.py), and every portraitkit setting a page names is one the code
reads. The README's timing of the local generator runs here as printed.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from portraitkit.generators.styles import EFFECTS
from tests.npm import npm_install
from tests.test_supabase_cli import CLI_ENV, CLI_VERSION, _cli_version

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/supabase.md")
NEEDS_PROJECT = "# needs a Supabase project"
SHELL_BLOCKS = {"", "sh", "bash", "shell", "console"}
PORTRAITKIT = Path(sys.executable).parent / "portraitkit"


@dataclass(frozen=True)
class ByTest:
    """A test that runs the command (or sends its request)."""

    path: str
    name: str


@dataclass(frozen=True)
class ByScript:
    """A script that runs the command word for word (a line of its own), or the part of
    the command given."""

    path: str
    part: str | None = None


API = "tests/web/test_api.py"
TIMING = ".venv/bin/python - <<'PY'"
EXERCISED: dict[str, tuple[ByTest | ByScript, ...]] = {
    # README.md, the top
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/portraitkit demo": (
        ByScript(".ci/run", "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && "),
        ByTest("tests/cli/test_demo.py", "test_demo_makes_a_batch_of_portraits_from_nothing"),
    ),
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/pytest -q": (
        ByScript(".ci/run"),
    ),
    # README.md, "The command line"
    ".venv/bin/portraitkit batches list --user demo@portraitkit.local": (
        ByTest("tests/cli/test_demo.py", "test_the_demo_batch_is_in_the_gallery"),
    ),
    ".venv/bin/portraitkit batches show BATCH_ID --user demo@portraitkit.local "
    "--contact-sheet sheet.png": (
        ByTest("tests/cli/test_demo.py", "test_the_demo_batch_is_in_the_gallery"),
        ByTest("tests/cli/test_batches.py", "test_show_writes_a_contact_sheet"),
    ),
    # README.md, "The app's side"
    "TOKEN=$(.venv/bin/portraitkit users token demo@portraitkit.local)": (
        ByTest("tests/cli/test_serve.py", "test_a_token_from_users_token_works_against_serve"),
    ),
    "curl $API/api/styles": (ByTest(API, "test_styles_are_grouped_by_category_with_costs"),),
    'curl -H "$AUTH" -H "Idempotency-Key: tap-1" $API/api/generate/batch '
    '-F photo=@me.jpg -F styles=pencil_sketch -F styles=pop_art -F custom_prompt="in red"': (
        ByTest(API, "test_a_batch_from_an_upload_is_paid_once"),
        ByTest(API, "test_the_same_idempotency_key_returns_the_first_batch"),
    ),
    "curl -H \"$AUTH\" -H 'Content-Type: application/json' $API/api/generate/batch "
    '-d \'{"styles": ["noir"], "source_path": "<user id>/sources/<hash>.png"}\'': (
        ByTest(API, "test_a_batch_from_a_stored_photo"),
    ),
    'curl -H "$AUTH" "$API/api/user/batches?limit=20&status=processing"': (
        ByTest(API, "test_the_gallery_pages_newest_first"),
    ),
    'curl -H "$AUTH" $API/api/user/batches/BATCH_ID': (
        ByTest(API, "test_a_finished_batch_shows_its_images"),
    ),
    'curl -N -H "$AUTH" $API/api/user/batches/BATCH_ID/events': (
        ByTest(API, "test_events_stream_the_batch_until_it_ends"),
    ),
    'curl -X POST -H "$AUTH" $API/api/user/batches/BATCH_ID/cancel': (
        ByTest(API, "test_cancel_retry_and_delete"),
    ),
    'curl -X POST -H "$AUTH" $API/api/user/batches/BATCH_ID/retry': (
        ByTest(API, "test_cancel_retry_and_delete"),
    ),
    'curl -X DELETE -H "$AUTH" $API/api/user/batches/BATCH_ID': (
        ByTest(API, "test_cancel_retry_and_delete"),
    ),
    'curl -H "$AUTH" $API/api/user/stats': (
        ByTest(API, "test_a_batch_from_an_upload_is_paid_once"),
    ),
    "curl $API/healthz; curl $API/readyz": (ByTest(API, "test_health_and_readiness"),),
    # README.md, "The worker": the local generator's timing (a heredoc: its first line).
    TIMING: (ByTest("tests/test_docs.py", "test_the_generator_timing_in_the_readme_runs"),),
}


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str  # continuation lines joined; a heredoc's body follows its first line
    needs_project: bool

    @property
    def key(self) -> str:
        """What EXERCISED lists it by: the command, or a heredoc's first line."""
        return self.text.splitlines()[0]

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text.splitlines()[0]}"


def shell_blocks(page: str) -> list[tuple[int, list[str]]]:
    """(line number of the first line inside, lines) of every shell block of a page."""
    blocks: list[tuple[int, list[str]]] = []
    lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
    inside: tuple[str, int, list[str]] | None = None
    for number, line in enumerate(lines, start=1):
        if inside is None:
            if line.startswith("```"):
                inside = (line[3:].strip(), number + 1, [])
        elif line.startswith("```"):
            if inside[0] in SHELL_BLOCKS:
                blocks.append((inside[1], inside[2]))
            inside = None
        else:
            inside[2].append(line)
    assert inside is None, f"{page}: a code block is never closed"
    return blocks


def is_assignment(text: str) -> bool:
    """`NAME=value` on its own, with no command substitution: sets, runs nothing."""
    words = shlex.split(text)
    return (
        len(words) == 1 and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]) is not None
    ) and "$(" not in text


def without_comment(line: str) -> str:
    """The line without a trailing `  # comment` (one with no quote in it)."""
    return re.sub(r"\s+#\s[^'\"]*$", "", line).rstrip()


@functools.cache
def commands(page: str) -> tuple[Command, ...]:
    found: list[Command] = []
    for start, lines in shell_blocks(page):
        needs_project = bool(lines) and lines[0].strip() == NEEDS_PROJECT
        i = 0
        while i < len(lines):
            number, line = start + i, lines[i].strip()
            i += 1
            if not line or line.startswith("#"):
                continue
            while line.endswith("\\") and i < len(lines):
                line = line[:-1].rstrip() + " " + lines[i].strip()
                i += 1
            text = without_comment(line)
            heredoc = re.search(r"<<-?\s*'?(\w+)'?", text)
            if heredoc:
                end = lines.index(heredoc[1], i)
                text = "\n".join([text, *lines[i : end + 1]])
                i = end + 1
            if not is_assignment(text):
                found.append(Command(page, number, text, needs_project))
    return tuple(found)


def all_commands() -> list[Command]:
    return [c for page in PAGES for c in commands(page)]


def invocations(command: Command, program: str) -> list[list[str]]:
    """The argument lists ``program`` is run with in a command (pipelines, `&&`, `;`,
    `$(...)` split apart; leading NAME=value assignments dropped)."""
    first_line = command.text.splitlines()[0]
    lexer = shlex.shlex(first_line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    runs: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set("&|;()<>"):
            runs.append([])
        else:
            runs[-1].append(token.removesuffix("$") if token.endswith("=$") else token)
    found = []
    for words in runs:
        while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
            words = words[1:]
        if words and Path(words[0]).name == program:
            found.append(words[1:])
    return found


def test_the_pages_have_shell_commands() -> None:
    """What the tests below check is there to check (a parser that finds nothing passes
    everything)."""
    for page in PAGES:
        assert len(commands(page)) >= 5, page
    assert any(c.needs_project for c in commands("docs/supabase.md"))
    assert any(not c.needs_project for c in commands("README.md"))


@pytest.mark.parametrize("page", PAGES)
def test_every_command_needs_a_project_or_is_run_by_the_tests(page: str) -> None:
    unlisted = [str(c) for c in commands(page) if not c.needs_project and c.key not in EXERCISED]
    assert unlisted == [], (
        f"mark the block with {NEEDS_PROJECT!r} or add the command to EXERCISED with the "
        "test that runs it"
    )


def test_every_exercised_command_is_still_on_a_page() -> None:
    shown = {c.key for c in all_commands() if not c.needs_project}
    assert [text for text in EXERCISED if text not in shown] == []


def test_the_tests_named_for_each_command_exist() -> None:
    missing = []
    for text, evidence in EXERCISED.items():
        for item in evidence:
            source = (ROOT / item.path).read_text(encoding="utf-8")
            if isinstance(item, ByScript):
                runs = text in source.splitlines()
                if item.part is not None:
                    runs = text.startswith(item.part) and item.part in source
                if not runs:
                    missing.append(f"{item.path} does not run {item.part or text!r}")
                continue
            functions = {
                node.name
                for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            }
            if item.name not in functions:
                missing.append(f"{item.path}::{item.name}")
    assert missing == []


# -- subcommands and flags ------------------------------------------------------------


@functools.cache
def help_text(program: str, *path: str) -> str:
    if program == "portraitkit":
        argv, env = [str(PORTRAITKIT)], {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    else:
        argv, env = [program], CLI_ENV
    done = subprocess.run(
        [*argv, *path, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, f"{program} {' '.join(path)} --help: {done.stderr}"
    return done.stdout


def subcommands(help_output: str) -> set[str]:
    """Subcommand names a --help lists: Typer's "Commands" panel, or the Supabase CLI's
    "SUBCOMMANDS" section (aliases too)."""
    names: set[str] = set()
    section = False
    for line in help_output.splitlines():
        if re.match(r"^╭─ Commands ─|^SUBCOMMANDS$", line):
            section = True
        elif section and (line.startswith("╰") or not line.strip()):
            section = False
        elif section:
            entry = re.match(r"^(?:│ |  )([a-z][\w-]*(?:, [a-z][\w-]*)*)(?=\s)", line)
            if entry:
                names.update(entry[1].split(", "))
    return names


def takes_value(help_output: str, flag: str) -> bool:
    line = next((li for li in help_output.splitlines() if re.search(_word(flag), li)), "")
    after = re.search(_word(flag) + r"(?:,?\s+-\w\b)?\s+(<[^>]*>|string|choice|int)?", line)
    return bool(after and after[1] and after[1] != "<bool>")


def _word(flag: str) -> str:
    return rf"(?<![\w-]){re.escape(flag)}(?![\w-])"


def check_invocation(program: str, args: list[str]) -> list[str]:
    """Problems with one invocation: an unknown subcommand or flag."""
    root = help_text(program)
    path: list[str] = []
    flags: list[str] = []
    words = iter(args)
    for word in words:
        here = help_text(program, *path)
        if word.startswith("-"):
            flag = word.split("=", 1)[0]
            flags.append(flag)
            if "=" not in word and subcommands(here) and takes_value(here + root, flag):
                next(words, None)  # the value of an option given before the subcommand
        elif subcommands(here):
            if word not in subcommands(here):
                return [f"{program} {' '.join(path)}: no subcommand {word!r}"]
            path.append(word)
    leaf = help_text(program, *path)
    problems = []
    if subcommands(leaf):
        problems.append(f"{program} {' '.join(path)} needs a subcommand")
    for flag in flags:
        if not re.search(_word(flag), leaf + root):
            problems.append(f"{program} {' '.join(path)}: no flag {flag}")
    return problems


def test_every_portraitkit_subcommand_and_flag_exists() -> None:
    problems, checked = [], 0
    for command in all_commands():
        for args in invocations(command, "portraitkit"):
            checked += 1
            problems += [f"{command}: {p}" for p in check_invocation("portraitkit", args)]
    assert checked >= 10 and problems == []


def test_the_flag_check_finds_a_misspelt_flag_and_subcommand() -> None:
    assert check_invocation("portraitkit", ["worker", "--once"]) == []
    assert check_invocation("portraitkit", ["worker", "--onse"]) == [
        "portraitkit worker: no flag --onse"
    ]
    assert check_invocation("portraitkit", ["batches", "lst"]) == [
        "portraitkit batches: no subcommand 'lst'"
    ]


@pytest.fixture(scope="module")
def supabase_cli() -> Path:
    """The Supabase CLI of tests/test_supabase_cli.py (the same pinned version and place)."""
    entry = Path("node_modules") / ".bin" / "supabase"
    ready = lambda prefix: _cli_version(prefix / entry) == CLI_VERSION  # noqa: E731
    return npm_install("supabase", CLI_VERSION, ready=ready, name="supabase-cli") / entry


def test_every_supabase_cli_subcommand_and_flag_exists(supabase_cli: Path) -> None:
    problems, checked = [], 0
    for command in all_commands():
        for args in invocations(command, "supabase"):
            checked += 1
            problems += [f"{command}: {p}" for p in check_invocation(str(supabase_cli), args)]
    assert checked >= 5 and problems == []


# -- settings and the timing ------------------------------------------------------------


def test_every_setting_a_page_names_is_read_by_the_code() -> None:
    code = "\n".join(
        p.read_text(encoding="utf-8")
        for folder in ("portraitkit", "cli")
        for p in (ROOT / folder).rglob("*.py")
    )
    named = {
        name
        for page in PAGES
        for name in re.findall(
            r"\b((?:SUPABASE|PORTRAITKIT)_[A-Z_]+|DATABASE_URL)\b", (ROOT / page).read_text()
        )
    }
    assert named and {n for n in named if f'"{n}"' not in code} == set()


def test_the_generator_timing_in_the_readme_runs() -> None:
    (timing,) = [c for c in commands("README.md") if c.key == TIMING]
    done = subprocess.run(
        ["bash", "-c", timing.text], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert [row[0] for row in rows] == sorted(EFFECTS)
    assert all(row[2] == "ms" and 0 < int(row[1]) < 10_000 for row in rows)
