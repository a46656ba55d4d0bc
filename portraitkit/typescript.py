"""TypeScript types for the app, read from the live database's catalog.

The first part of the output is, byte for byte, what ``supabase gen types typescript``
prints for the same database. The CLI runs postgres-meta's typescript template (v0.96.6) in
Docker and formats it with prettier; here psycopg reads the same catalog facts and a small
copy of prettier's line fitting lays them out, so neither Docker nor Node is needed.
postgres-meta's choices are kept so the two files can be swapped without a diff: columns
and arguments sorted by name, ``RETURNS TABLE`` fields never nullable, an argument with a
default optional. One later fix is taken: a ``ROWS 1`` set-returning function keeps its
array type unless it returns a table's rows (PostgREST answers with an array).

After that part come portraitkit's own exports: the contract's error codes with their HTTP
status, and short aliases for the rows the app reads.

Why one module of this size: catalog, type mapping and layout make one generator, and a
reader comparing it with postgres-meta's template needs them side by side.
"""

from __future__ import annotations

import itertools
import json
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg.rows import dict_row

from portraitkit.errors import ERRORS_BY_CODE

DEFAULT_SCHEMAS = ("public",)
# Shorthands the app imports, each written only when its relation or enum is in public.
ROW_ALIASES = {
    "GenerationBatch": "generation_batches",
    "Generation": "generations",
    "BatchGenerationsView": "batch_generations_view",
    "Style": "styles",
    "Profile": "profiles",
}
ENUM_ALIASES = {"BatchStatus": "batch_status", "GenerationStatus": "generation_status"}
_SYSTEM_SCHEMAS = ["information_schema", "pg_catalog", "pg_toast"]
_UNNAMED_ARG_TYPES = {114, 3802, 25}  # json, jsonb, text: PostgREST passes the body as is
_ARG_MODES = {"i": "in", "b": "inout", "v": "variadic", "o": "out", "t": "table"}

# ------------------------------------------------------------------------------ the catalog

_SCHEMAS_SQL = """
select n.nspname as name from pg_namespace n
where n.nspname = any(%(schemas)s)
  and (pg_has_role(n.nspowner, 'USAGE') or has_schema_privilege(n.oid, 'CREATE, USAGE'))
"""
# Tables only when we hold some privilege on them (as postgres-meta lists them); views always.
_RELATIONS_SQL = """
select c.oid::int8 as oid, n.nspname as schema, c.relname as name, c.relkind::text as kind,
       c.relkind = 'v' and (pg_relation_is_updatable(c.oid, false) & 20) = 20 as updatable
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = any(%(schemas)s) and c.relkind in ('r', 'p', 'f', 'v', 'm')
  and (c.relkind not in ('r', 'p') or pg_has_role(c.relowner, 'USAGE')
    or has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
    or has_any_column_privilege(c.oid, 'SELECT, INSERT, UPDATE, REFERENCES'))
"""
# A domain's column is typed by the domain's base type.
_COLUMNS_SQL = """
select a.attrelid::int8 as relation, a.attnum as number, a.attname as name,
       coalesce(bt.typname, t.typname) as type_name,
       not (a.attnotnull or (t.typtype = 'd' and t.typnotnull)) as nullable,
       a.atthasdef as has_default, a.attidentity::text as identity,
       c.relkind in ('r', 'p')
         or (c.relkind in ('v', 'f') and pg_column_is_updatable(c.oid, a.attnum, false))
         as updatable
from pg_attribute a
join pg_class c on c.oid = a.attrelid
join pg_namespace n on n.oid = c.relnamespace
join pg_type t on t.oid = a.atttypid
left join pg_type bt on t.typtype = 'd' and bt.oid = t.typbasetype
where n.nspname = any(%(schemas)s) and c.relkind in ('r', 'p', 'f', 'v', 'm')
  and a.attnum > 0 and not a.attisdropped
  and (pg_has_role(c.relowner, 'USAGE')
    or has_column_privilege(c.oid, a.attnum, 'SELECT, INSERT, UPDATE, REFERENCES'))
"""
_FUNCTIONS_SQL = """
select n.nspname as schema, p.proname as name,
       coalesce(p.proallargtypes, p.proargtypes::oid[])::int8[] as arg_types,
       p.proargmodes::text[] as arg_modes, p.proargnames as arg_names,
       p.pronargs - p.pronargdefaults as required_inputs,
       pg_get_function_arguments(p.oid) as argument_types,
       pg_get_function_result(p.oid) as return_type,
       p.prorettype::int8 as return_type_oid,
       nullif(rt.typrelid, 0)::int8 as return_relation,
       p.proretset as returns_set,
       case when p.proretset then nullif(p.prorows, 0) end as row_estimate
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
left join pg_type rt on rt.oid = p.prorettype
where n.nspname = any(%(schemas)s) and p.prokind = 'f'
  and pg_get_function_result(p.oid) not in ('trigger', 'event_trigger')
"""
# Every type, system ones too: arguments and results are looked up by oid, columns by name.
_TYPES_SQL = """
select t.oid::int8 as oid, t.typname as name, n.nspname as schema,
       format_type(t.oid, null) as format, nullif(t.typrelid, 0)::int8 as relation,
       coalesce((select array_agg(e.enumlabel order by e.enumsortorder)
                 from pg_enum e where e.enumtypid = t.oid), '{}') as enums,
       coalesce((select json_agg(json_build_array(a.attname, a.atttypid::int8) order by a.attnum)
                 from pg_class c join pg_attribute a on a.attrelid = c.oid
                 where c.oid = t.typrelid and c.relkind = 'c' and not a.attisdropped),
                '[]') as attributes
from pg_type t join pg_namespace n on n.oid = t.typnamespace
where t.typrelid = 0
   or (select c.relkind in ('c', 'r', 'v', 'm', 'p') from pg_class c where c.oid = t.typrelid)
order by t.oid
"""
# Foreign keys as PostgREST reads them: one-to-one when the columns are a primary or unique
# key of their table.
_FOREIGN_KEYS_SQL = """
select k.conname as name, n.nspname as schema, c.relname as relation,
       array(select a.attname::text from unnest(k.conkey) with ordinality u(num, i)
             join pg_attribute a on a.attrelid = k.conrelid and a.attnum = u.num
             order by u.i) as columns,
       exists (select from pg_constraint u
               where u.conrelid = k.conrelid and u.contype in ('p', 'u')
                 and (select array_agg(x order by x) from unnest(u.conkey) x) = k.conkey)
         as one_to_one,
       rn.nspname as referenced_schema, r.relname as referenced_relation,
       array(select a.attname::text from unnest(k.confkey) with ordinality u(num, i)
             join pg_attribute a on a.attrelid = k.confrelid and a.attnum = u.num
             order by u.i) as referenced_columns,
       k.conrelid::int8 as relation_oid, k.conkey::int[] as keys,
       k.confrelid::int8 as referenced_oid, k.confkey::int[] as referenced_keys
from pg_constraint k
join pg_class c on c.oid = k.conrelid join pg_namespace n on n.oid = c.relnamespace
join pg_class r on r.oid = k.confrelid join pg_namespace rn on rn.oid = r.relnamespace
where k.contype = 'f' and k.conparentid = 0 and n.nspname <> all(%(system)s)
"""
_VIEW_QUERIES_SQL = """
select c.oid::int8 as oid, r.ev_action::text as query
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
join pg_rewrite r on r.ev_class = c.oid
where c.relkind in ('v', 'm') and n.nspname <> all(%(system)s)
"""


@dataclass(frozen=True)
class Column:
    name: str
    number: int
    type_name: str
    nullable: bool
    has_default: bool
    identity: str  # '' (none), 'a' (always) or 'd' (by default)
    updatable: bool


@dataclass
class Relation:
    oid: int
    schema: str
    name: str
    kind: str  # pg_class.relkind: r, p, f (tables), v, m (views)
    updatable: bool
    columns: list[Column] = field(default_factory=list)

    def sorted_columns(self) -> list[Column]:
        return sorted(self.columns, key=lambda column: collation_key(column.name))


@dataclass(frozen=True)
class Arg:
    name: str
    mode: str  # in, inout, variadic, out, table
    type_oid: int
    has_default: bool


@dataclass(frozen=True)
class Function:
    schema: str
    name: str
    args: tuple[Arg, ...]  # sorted by name, as postgres-meta sorts them
    argument_types: str
    return_type: str
    return_type_oid: int
    return_relation: int | None
    returns_set: bool
    row_estimate: float | None

    @property
    def inputs(self) -> list[Arg]:
        return [arg for arg in self.args if arg.mode in ("in", "inout", "variadic")]


@dataclass(frozen=True)
class PgType:
    oid: int
    name: str
    schema: str
    format: str
    relation: int | None
    enums: tuple[str, ...]
    attributes: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Relationship:
    name: str
    schema: str
    relation: str
    columns: tuple[str, ...]
    one_to_one: bool
    referenced_schema: str
    referenced_relation: str
    referenced_columns: tuple[str, ...]


@dataclass
class Catalog:
    """What the generator needs to know about the database."""

    schemas: list[str]  # the ones asked for that exist, sorted
    relations: list[Relation]
    functions: list[Function]
    types: list[PgType]
    relationships: list[Relationship]


def read_catalog(conn: psycopg.Connection[Any], schemas: Sequence[str]) -> Catalog:
    """The catalog as one snapshot (a repeatable-read, read-only transaction)."""
    params = {"schemas": list(schemas), "system": _SYSTEM_SCHEMAS}
    fresh = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        if fresh:  # else a savepoint inside the caller's transaction, as it is
            cur.execute(b"set transaction isolation level repeatable read, read only")

        def rows(query: str) -> list[dict[str, Any]]:
            cur.execute(query.encode(), params)
            return cur.fetchall()

        found = [row["name"] for row in rows(_SCHEMAS_SQL)]
        relations = {row["oid"]: Relation(**row) for row in rows(_RELATIONS_SQL)}
        for row in rows(_COLUMNS_SQL):
            if (owner := relations.get(row.pop("relation"))) is not None:
                owner.columns.append(Column(**row))
        functions = [_function(**row) for row in rows(_FUNCTIONS_SQL)]
        types = [_pg_type(**row) for row in rows(_TYPES_SQL)]
        foreign_keys = rows(_FOREIGN_KEYS_SQL)
        views = {row["oid"]: _view_origins(row["query"]) for row in rows(_VIEW_QUERIES_SQL)}
    return Catalog(
        schemas=sorted(found, key=collation_key),
        relations=list(relations.values()),
        functions=functions,
        types=types,
        relationships=_relationships(foreign_keys, views, relations),
    )


def _function(
    arg_types: list[int],
    arg_modes: list[str] | None,
    arg_names: list[str] | None,
    required_inputs: int,
    **fields: Any,
) -> Function:
    """The function with its arguments; the last ``pronargdefaults`` inputs have defaults."""
    names = arg_names or [""] * len(arg_types)
    modes = [_ARG_MODES[mode] for mode in arg_modes or ["i"] * len(arg_types)]
    args, inputs = [], 0
    for name, mode, oid in zip(names, modes, arg_types, strict=True):
        is_input = mode in ("in", "inout", "variadic")
        args.append(Arg(name, mode, oid, is_input and inputs >= required_inputs))
        inputs += is_input
    return Function(args=tuple(sorted(args, key=lambda arg: collation_key(arg.name))), **fields)


def _pg_type(enums: list[str], attributes: list[list[Any]], **fields: Any) -> PgType:
    pairs = tuple((name, oid) for name, oid in attributes)
    return PgType(enums=tuple(enums), attributes=pairs, **fields)


def _view_origins(query: str) -> dict[int, tuple[int, int]]:
    """For each column of a view (by number), the table column (relation oid, number) it
    shows unchanged.

    A stored view is its query tree as text. The top query's target list records where each
    plain column reference comes from (``:resorigtbl``, ``:resorigcol``), through joins and
    subqueries too; PostgREST finds relationships through views the same way.
    """
    tokens: list[tuple[int, str]] = []  # (nesting depth, token)
    depth, word, chars = 0, "", iter(query)
    for char in chars:
        if char == "\\":  # an escaped character belongs to the word
            word += next(chars, "")
        elif char in " \n\t(){}":
            if word:
                tokens.append((depth, word))
                word = ""
            if char in "({":
                tokens.append((depth, char))
                depth += 1
            elif char in ")}":
                depth -= 1
                tokens.append((depth, char))
        else:
            word += char
    origins: dict[int, tuple[int, int]] = {}
    entry: dict[str, int] = {}
    in_targets, key = False, ""
    for level, token in tokens:  # ({QUERY ... :targetList ({TARGETENTRY :resno 1 ...} ...) ...})
        if level == 2 and token == ":targetList":
            in_targets = True
        elif not in_targets:
            continue
        elif level == 2 and token != "(":
            break  # the end of the list, or an empty one (`<>`)
        elif level == 3 and token == "}":
            if entry.get(":resorigtbl"):
                origins[entry[":resno"]] = (entry[":resorigtbl"], entry[":resorigcol"])
            entry = {}
        elif level == 4 and key:
            entry[key], key = (int(token) if token.isdigit() else 0), ""
        elif level == 4 and token in (":resno", ":resorigtbl", ":resorigcol"):
            key = token
    return origins


def _relationships(
    foreign_keys: list[dict[str, Any]],
    views: dict[int, dict[int, tuple[int, int]]],
    relations: dict[int, Relation],
) -> list[Relationship]:
    """Foreign keys, then the same keys seen through views that show all their columns
    (from the view, to it, or both), sorted as postgres-meta sorts them."""
    shown: dict[int, dict[tuple[int, int], list[str]]] = {}  # view -> table column -> names
    for view in sorted(relations.values(), key=lambda r: (r.schema, r.name)):
        if view.oid in views:
            shown[view.oid] = defaultdict(list)
            for column in sorted(view.columns, key=lambda column: column.number):
                origin, seen = views[view.oid].get(column.number), {view.oid}
                while origin is not None and origin[0] not in seen:  # views on views
                    shown[view.oid][origin].append(column.name)
                    seen.add(origin[0])
                    origin = views.get(origin[0], {}).get(origin[1])

    def through(table: int, keys: list[int]) -> list[tuple[Relation, tuple[str, ...]]]:
        return [
            (relations[oid], names)
            for oid, columns in shown.items()
            if all((table, key) in columns for key in keys)
            for names in itertools.product(*(columns[(table, key)] for key in keys))
        ]

    direct, derived = [], []
    for row in foreign_keys:
        sources = through(row.pop("relation_oid"), row.pop("keys"))
        targets = through(row.pop("referenced_oid"), row.pop("referenced_keys"))
        key = Relationship(**row | {c: tuple(row[c]) for c in ("columns", "referenced_columns")})
        direct.append(key)
        derived += [_seen_through(key, source, None) for source in sources]
        derived += [_seen_through(key, None, target) for target in targets]
        derived += [_seen_through(key, s, t) for s in sources for t in targets]
    return sorted(
        direct + derived,
        key=lambda r: (
            collation_key(r.name),
            collation_key(r.referenced_relation),
            collation_key(json.dumps(list(r.referenced_columns), separators=(",", ":"))),
        ),
    )


def _seen_through(
    key: Relationship,
    source: tuple[Relation, tuple[str, ...]] | None,
    target: tuple[Relation, tuple[str, ...]] | None,
) -> Relationship:
    """The foreign key from a view's columns, or to them, or both."""
    if source is not None:
        key = replace(key, schema=source[0].schema, relation=source[0].name, columns=source[1])
    if target is not None:
        view, columns = target
        key = replace(
            key,
            referenced_schema=view.schema,
            referenced_relation=view.name,
            referenced_columns=columns,
        )
    return key


def collation_key(text: str) -> tuple[Any, ...]:
    """Sort like JavaScript's ``localeCompare`` (ICU's root order) for identifier-like text:
    punctuation, then digits, then letters; accents, then case (lower first) break ties."""
    punctuation = "_-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$"

    def weight(char: str) -> tuple[int, str]:
        if char.isspace():
            return (0, "")
        if char in punctuation:
            return (1, chr(punctuation.index(char)))
        if char.isdigit():
            return (2, char)
        return (3, char.casefold()) if char.isalpha() else (1, char)

    decomposed = unicodedata.normalize("NFD", text)
    base = [char for char in decomposed if not unicodedata.combining(char)]
    return (
        tuple(weight(char) for char in base),
        decomposed.casefold(),
        tuple(char.isupper() for char in base),
    )


# ------------------------------------------------------------------------ TypeScript types


@dataclass(frozen=True)
class Lit:
    """A type written as it is: a keyword, a string literal, an indexed access."""

    text: str
    reference: bool = False  # a named type such as `Json`: `Json | null` stays on one line


@dataclass(frozen=True)
class Member:
    key: str
    type: Node
    optional: bool = False


@dataclass(frozen=True)
class Obj:
    members: tuple[Member, ...]
    expanded: bool = False  # postgres-meta writes a newline after `{`: prettier keeps it
    expression: bool = False  # an object literal (`Constants`), not an object type


@dataclass(frozen=True)
class Union:
    types: tuple[Node, ...]


@dataclass(frozen=True)
class ArrayOf:
    element: Node


@dataclass(frozen=True)
class Tuple:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Intersection:
    types: tuple[Node, ...]


Node = Lit | Obj | Union | ArrayOf | Tuple | Intersection
NULL, UNKNOWN, NEVER = Lit("null"), Lit("unknown"), Lit("never")
TRUE, FALSE = Lit("true"), Lit("false")
NEVER_MAP = Lit("{ [_ in never]: never }")  # an empty section, always on three lines


def union(types: Iterable[Node]) -> Node:
    flat = [part for t in types for part in (t.types if isinstance(t, Union) else (t,))]
    return flat[0] if len(flat) == 1 else Union(tuple(flat))


def nullable(node: Node) -> Node:
    return node if node == UNKNOWN else union((node, NULL))


def string(value: str) -> Lit:
    """A string literal, quoted as prettier quotes it (double quotes unless that means more
    escapes)."""
    content = json.dumps(value, ensure_ascii=False)[1:-1]
    if content.count('"') <= content.count("'"):
        return Lit(f'"{content}"')
    return Lit("'" + content.replace('\\"', '"').replace("'", "\\'") + "'")


def obj(members: Iterable[tuple[str, Node] | Member], *, expanded: bool = True) -> Obj:
    return Obj(tuple(m if isinstance(m, Member) else Member(*m) for m in members), expanded)


def literal(members: Iterable[tuple[str, Node]]) -> Obj:
    return Obj(tuple(Member(*m) for m in members), expanded=True, expression=True)


# ------------------------------------------------------------- layout, as prettier does it


@dataclass(frozen=True)
class Line:
    soft: bool = False  # flat, nothing; a plain line is a space
    hard: bool = False


@dataclass(frozen=True)
class Indent:
    contents: Doc


@dataclass(frozen=True)
class IfBreak:
    broken: Doc
    flat: Doc = ""


class Group:
    """On one line if it fits, else with its lines broken. A group that must break (or
    holds one that must) breaks every group around it, as prettier propagates breaks."""

    def __init__(self, contents: Doc, *, should_break: bool = False) -> None:
        self.contents = contents
        self.broken = should_break or _forces_break(contents)


Doc = str | list["Doc"] | Line | Indent | IfBreak | Group
LINE, SOFTLINE = Line(), Line(soft=True)
WIDTH = 80  # prettier's printWidth
_Command = tuple[int, bool, Doc]  # indentation, flat?, doc


def _forces_break(doc: Doc) -> bool:
    if isinstance(doc, list):
        return any(_forces_break(part) for part in doc)
    if isinstance(doc, Indent):
        return _forces_break(doc.contents)
    if isinstance(doc, IfBreak):
        return _forces_break(doc.broken) or _forces_break(doc.flat)
    return (isinstance(doc, Group) and doc.broken) or (isinstance(doc, Line) and doc.hard)


def _width(text: str) -> int:
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def _fits(command: _Command, rest: list[_Command], width: int) -> bool:
    """Whether ``command`` laid out flat, and what follows it up to the next line break,
    stays within ``width`` (prettier's ``fits``)."""
    stack, rest_index, pending_space = [command], len(rest), 0
    while width >= 0:
        if not stack:
            if rest_index == 0:
                return True
            rest_index -= 1
            stack.append(rest[rest_index])
            continue
        indent, flat, doc = stack.pop()
        if isinstance(doc, str):
            if doc:
                width -= _width(doc) + pending_space
                pending_space = 0
        elif isinstance(doc, list):
            stack.extend((indent, flat, part) for part in reversed(doc))
        elif isinstance(doc, Indent):
            stack.append((indent, flat, doc.contents))
        elif isinstance(doc, Group):
            stack.append((indent, flat and not doc.broken, doc.contents))
        elif isinstance(doc, IfBreak):
            stack.append((indent, flat, doc.flat if flat else doc.broken))
        elif not flat or doc.hard:
            return True
        elif not doc.soft:
            pending_space = 1
    return False


def render(doc: Doc) -> str:
    """The text of ``doc``: prettier's printer, for the documents built here."""
    out: list[str] = []
    position = 0
    commands: list[_Command] = [(0, False, doc)]
    while commands:
        indent, flat, doc = commands.pop()
        if isinstance(doc, str):
            out.append(doc)
            position += _width(doc)
        elif isinstance(doc, list):
            commands.extend((indent, flat, part) for part in reversed(doc))
        elif isinstance(doc, Indent):
            commands.append((indent + 2, flat, doc.contents))
        elif isinstance(doc, Group):
            fits = flat or (
                not doc.broken and _fits((indent, True, doc.contents), commands, WIDTH - position)
            )
            commands.append((indent, fits and not doc.broken, doc.contents))
        elif isinstance(doc, IfBreak):
            commands.append((indent, flat, doc.flat if flat else doc.broken))
        elif flat and not doc.hard:
            out.append("" if doc.soft else " ")
            position += not doc.soft
        else:
            while out and out[-1].endswith(" "):  # no trailing whitespace
                out[-1] = out[-1].rstrip(" ")
                if not out[-1]:
                    out.pop()
            out.append("\n" + " " * indent)
            position = indent
    return "".join(out)


def _key(name: str) -> str:
    """A property name, unquoted where prettier unquotes it (an ES5 identifier name)."""
    quoted = string(name).text
    return name if name.replace("$", "_").isidentifier() and quoted[1:-1] == name else quoted


def _joined(separator: Doc, docs: Iterable[Doc]) -> list[Doc]:
    parts: list[Doc] = []
    for doc in docs:
        parts += [separator, doc] if parts else [doc]
    return parts


def to_doc(node: Node) -> Doc:
    """The layout prettier gives ``node`` (its object, union, tuple and intersection rules)."""
    if node is NEVER_MAP:
        return Group(["{", Indent([LINE, "[_ in never]: never"]), LINE, "}"], should_break=True)
    if isinstance(node, Lit):
        return node.text
    if isinstance(node, Obj):
        if not node.members:
            return "{}"
        members = _joined(
            [",", LINE] if node.expression else [IfBreak("", ";"), LINE],
            ([_key(m.key), "?" if m.optional else "", ": ", to_doc(m.type)] for m in node.members),
        )
        trailing = IfBreak(",") if node.expression else ""
        return Group(
            ["{", Indent([LINE, *members]), trailing, LINE, "}"], should_break=node.expanded
        )
    if isinstance(node, Union):
        return _union_doc(node)
    if isinstance(node, ArrayOf):
        if isinstance(node.element, Union) and not _hugs(node.element):
            inner = Group([Indent([SOFTLINE, _union_doc(node.element, bare=True)]), SOFTLINE])
            return ["(", inner, ")[]"]
        return [to_doc(node.element), "[]"]
    if isinstance(node, Tuple):
        if not node.items:
            return "[]"
        items = _joined([",", LINE], (to_doc(item) for item in node.items))
        return Group(["[", Indent([SOFTLINE, *items]), IfBreak(","), SOFTLINE, "]"])
    return Group(_joined(" & ", (to_doc(t) for t in node.types)))


def _hugs(node: Union) -> bool:
    """`{ ... } | null` and `Json | null` stay inline, never one member a line."""
    objects = [t for t in node.types if isinstance(t, Obj) or (isinstance(t, Lit) and t.reference)]
    return bool(objects) and all(t is objects[0] or t == NULL for t in node.types)


def _union_doc(node: Union, *, bare: bool = False) -> Doc:
    if _hugs(node):
        return _joined(" | ", (to_doc(t) for t in node.types))
    parts: list[Doc] = []
    for index, member in enumerate(node.types):
        parts += [IfBreak("| ") if index == 0 else [LINE, "| "], Indent(to_doc(member))]
    printed = Group(parts)
    return printed if bare else Group(Indent([SOFTLINE, printed]))


# ------------------------------------------------------------- postgres-meta's template

_SCALARS = {
    "bool": "boolean",
    **dict.fromkeys(["int2", "int4", "int8", "float4", "float8", "numeric"], "number"),
    **dict.fromkeys(
        [
            "bytea",
            "bpchar",
            "varchar",
            "date",
            "text",
            "citext",
            "time",
            "timetz",
            "timestamp",
            "timestamptz",
            "uuid",
            "vector",
            "interval",
        ],
        "string",
    ),
    "void": "undefined",
}
_CANNOT_CHOOSE = (
    "Could not choose the best candidate function between: {}. Try renaming the parameters "
    "or the function itself in the database so function overloading can be resolved"
)


def _ref(*path: str) -> Lit:
    return Lit("Database" + "".join(f"[{string(part).text}]" for part in path))


def _boolean(value: bool) -> Lit:
    return TRUE if value else FALSE


class _Template:
    """postgres-meta's typescript template, building type nodes instead of text."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.types = {t.oid: t for t in catalog.types}
        self.functions: dict[str, list[Function]] = defaultdict(list)
        for fn in sorted(catalog.functions, key=lambda fn: collation_key(fn.name)):
            if self._callable(fn):
                self.functions[fn.schema].append(fn)

    def ts_type(self, schema: str, name: str) -> Node:
        """The TypeScript for a PostgreSQL type, found by name as postgres-meta finds it
        (in ``schema`` first): scalars, arrays, enums, composite types, row types."""
        if name in ("json", "jsonb", "record"):
            return Lit("Record<string, unknown>" if name == "record" else "Json", reference=True)
        if name in _SCALARS:
            return Lit(_SCALARS[name])
        if name.startswith("_"):
            return ArrayOf(self.ts_type(schema, name[1:]))
        types, relations = self.catalog.types, self.catalog.relations
        enum = _pick(schema, [t for t in types if t.name == name and t.enums])
        if enum is not None and enum.schema not in self.catalog.schemas:
            return union(string(label) for label in enum.enums)
        kinds: list[tuple[str, list[Any]]] = [
            ("Enums", [enum] if enum else []),
            ("CompositeTypes", [t for t in types if t.name == name and t.attributes]),
            ("Tables", [r for r in relations if r.name == name and r.kind in "rp"]),
            ("Views", [r for r in relations if r.name == name and r.kind == "v"]),
        ]
        for section, found in kinds:
            if (match := _pick(schema, found)) is not None:
                if match.schema not in self.catalog.schemas:
                    return UNKNOWN
                row = ("Row",) if section in ("Tables", "Views") else ()
                return _ref(match.schema, section, match.name, *row)
        return UNKNOWN

    def type_of(self, schema: str, oid: int) -> Node:
        pg_type = self.types.get(oid)
        return UNKNOWN if pg_type is None else self.ts_type(schema, pg_type.name)

    def _type_name(self, oid: int) -> str:
        pg_type = self.types.get(oid)
        return pg_type.name if pg_type else "unknown"

    def _row_type(self, oid: int) -> PgType | None:
        pg_type = self.types.get(oid)
        return pg_type if pg_type is not None and pg_type.relation else None

    def _callable(self, fn: Function) -> bool:
        """Whether PostgREST can call it: named inputs only, or a lone unnamed json, text or
        row one (unnamed inputs with defaults of those types are fine too)."""
        inputs = fn.inputs
        unnamed = [a for a in inputs if not a.name]
        if all(a.has_default and a.type_oid in _UNNAMED_ARG_TYPES for a in unnamed):
            return True
        return len(inputs) == 1 and (
            inputs[0].type_oid in _UNNAMED_ARG_TYPES
            or self._row_type(inputs[0].type_oid) is not None
        )

    def _returned_relation(self, fn: Function) -> str | None:
        """The table, view or composite type whose rows the function returns."""
        if not fn.return_relation:
            return None
        for relation in self.catalog.relations:
            if relation.oid == fn.return_relation:
                return relation.name
        row_type = self._row_type(fn.return_type_oid)
        return row_type.name if row_type else None

    # -------------------------------------------------------------------- relations

    def column(self, schema: str, column: Column, *, optional: bool, nullable_: bool) -> Member:
        node = self.ts_type(schema, column.type_name)
        return Member(column.name, nullable(node) if nullable_ else node, optional)

    def row(self, schema: str, relation: Relation, *, computed: bool = True) -> Obj:
        """The columns, then the functions of the row (PostgREST's computed fields)."""
        members = [
            self.column(schema, c, optional=False, nullable_=c.nullable)
            for c in relation.sorted_columns()
        ]
        functions = self.functions[schema] if computed else []
        members += [
            Member(fn.name, nullable(self.returns(schema, fn)))
            for fn in functions
            if fn.argument_types == relation.name
        ]
        return obj(members)

    def writes(self, relation: Relation, *, insert: bool) -> Obj:
        """Insert or Update: what may (or must) be written to each column."""
        members = []
        for c in relation.sorted_columns():
            if c.identity == "a" or (relation.kind == "v" and not c.updatable):
                members.append(Member(c.name, NEVER, optional=True))
            elif relation.kind == "v":
                members.append(self.column(relation.schema, c, optional=True, nullable_=True))
            else:
                optional = not insert or c.nullable or bool(c.identity) or c.has_default
                members.append(
                    self.column(relation.schema, c, optional=optional, nullable_=c.nullable)
                )
        return obj(members)

    def relation(self, relation: Relation) -> Obj:
        keys = [
            obj(
                [
                    ("foreignKeyName", string(r.name)),
                    ("columns", Tuple(tuple(map(string, r.columns)))),
                    ("isOneToOne", _boolean(r.one_to_one)),
                    ("referencedRelation", string(r.referenced_relation)),
                    ("referencedColumns", Tuple(tuple(map(string, r.referenced_columns)))),
                ]
            )
            for r in self.catalog.relationships
            if r.schema == relation.schema == r.referenced_schema and r.relation == relation.name
        ]
        members = [("Row", self.row(relation.schema, relation))]
        if relation.kind in "rpf" or relation.updatable:
            members.append(("Insert", self.writes(relation, insert=True)))
            members.append(("Update", self.writes(relation, insert=False)))
        return obj([*members, ("Relationships", Tuple(tuple(keys)))])

    # -------------------------------------------------------------------- functions

    def returns(self, schema: str, fn: Function) -> Node:
        """A `RETURNS TABLE`'s fields, a relation's row, or the returned type."""
        if fields := [a for a in fn.args if a.mode == "table"]:
            return obj((a.name, self.type_of(schema, a.type_oid)) for a in fields)
        for relation in self.catalog.relations:
            if relation.oid == fn.return_relation and relation.schema == schema:
                return self.row(schema, relation, computed=False)
        return self.type_of(schema, fn.return_type_oid)

    def problem(self, schema: str, fns: list[Function], fn: Function) -> str | None:
        """Why PostgREST cannot tell this overload from another one, or cannot call it."""
        inputs, others = fn.inputs, [other for other in fns if other is not fn]
        if not inputs:
            for o in others:
                if len(o.inputs) == 1 and not o.inputs[0].name and o.inputs[0].has_default:
                    returned = self._type_name(o.return_type_oid)
                    return _CANNOT_CHOOSE.format(
                        f"{schema}.{fn.name}(), {schema}.{fn.name}( => {returned})"
                    )
        elif len(inputs) == 1 and inputs[0].name:
            (arg,) = inputs
            clash = [
                o
                for o in others
                if [a.name for a in o.inputs] == [arg.name] and o.inputs[0].type_oid != arg.type_oid
            ]
            if clash:
                calls = [
                    f"{schema}.{fn.name}({a.name} => {self._type_name(a.type_oid)})"
                    for a in sorted((f.inputs[0] for f in [fn, *clash]), key=lambda a: a.type_oid)
                ]
                return _CANNOT_CHOOSE.format(", ".join(calls))
        if (
            len(inputs) == 1
            and not inputs[0].name
            and self._row_type(inputs[0].type_oid)
            and not self._returned_relation(fn)
        ):
            return (
                f"the function {schema}.{fn.name} with parameter or with a single unnamed "
                "json/jsonb parameter, but no matches were found in the schema cache"
            )
        return None

    def setof_options(self, fn: Function, returned: str | None, many: bool) -> Obj | None:
        """What supabase-js needs to select from (or embed) the rows a function returns."""
        if not returned:
            return None
        source, one, in_set = "*", not many, fn.returns_set
        row_type = self._row_type(fn.args[0].type_oid) if len(fn.args) == 1 else None
        if row_type is not None:  # a function of one row: embeddable from that relation
            in_set = fn.returns_set and fn.return_relation is not None
            source, one = row_type.format, not many if in_set else True
        return obj(
            [
                ("from", string(source)),
                ("to", string(returned)),
                ("isOneToOne", _boolean(one)),
                ("isSetofReturn", _boolean(in_set)),
            ]
        )

    def signature(self, schema: str, fns: list[Function], fn: Function) -> Obj:
        args = [Member(a.name, self.type_of(schema, a.type_oid), a.has_default) for a in fn.inputs]
        problem = self.problem(schema, fns, fn)
        returns = (
            Intersection((Obj((Member("error", TRUE),)), string(problem)))
            if problem
            else self.returns(schema, fn)
        )
        returned = self._returned_relation(fn)
        many = fn.row_estimate is not None and fn.row_estimate > 1
        if fn.returns_set and (many or returned is None):
            returns = _array_of_last(returns)
        members = [Member("Args", Obj(tuple(args)) if args else NEVER), Member("Returns", returns)]
        if (options := self.setof_options(fn, returned, many)) is not None:
            members.append(Member("SetofOptions", options))
        return Obj(tuple(members))

    def functions_of(self, schema: str) -> list[tuple[str, Node]]:
        """Each name's signature; overloads as a union, ordered by their arguments."""
        members = []
        for name, same_name in itertools.groupby(self.functions[schema], key=lambda fn: fn.name):
            fns = sorted(
                same_name,
                key=lambda f: (collation_key(f.argument_types), collation_key(f.return_type)),
            )
            members.append((name, union(self.signature(schema, fns, fn) for fn in fns)))
        return members

    # -------------------------------------------------------------------- the whole

    def _types(self, schema: str) -> list[PgType]:
        found = (t for t in self.catalog.types if t.schema == schema)
        return sorted(found, key=lambda t: collation_key(t.name))

    def schema(self, schema: str) -> Obj:
        relations = sorted(
            (r for r in self.catalog.relations if r.schema == schema),
            key=lambda r: collation_key(r.name),
        )
        types = self._types(schema)
        sections: dict[str, list[tuple[str, Node]]] = {
            "Tables": [(r.name, self.relation(r)) for r in relations if r.kind in "rpf"],
            "Views": [(r.name, self.relation(r)) for r in relations if r.kind in "vm"],
            "Functions": self.functions_of(schema),
            "Enums": [(t.name, union(map(string, t.enums))) for t in types if t.enums],
            "CompositeTypes": [
                (t.name, obj((a, nullable(self.type_of(schema, oid))) for a, oid in t.attributes))
                for t in types
                if t.attributes
            ],
        }
        return obj((name, obj(found) if found else NEVER_MAP) for name, found in sections.items())

    def database(self) -> Obj:
        return obj((schema, self.schema(schema)) for schema in self.catalog.schemas)

    def constants(self) -> Obj:
        """Every enum's labels, for the app to list at run time."""

        def enums(schema: str) -> Obj:
            found = [t for t in self._types(schema) if t.enums]
            return literal((t.name, Tuple(tuple(map(string, t.enums)))) for t in found)

        return literal((s, literal([("Enums", enums(s))])) for s in self.catalog.schemas)


def _pick(schema: str, found: list[Any]) -> Any:
    """The one in ``schema`` if there is one, else the first (postgres-meta's choice)."""
    return next((f for f in found if f.schema == schema), found[0] if found else None)


def _array_of_last(node: Node) -> Node:
    """postgres-meta appends `[]` to the type's text, so it binds to the last member."""
    if isinstance(node, Union | Intersection):
        return type(node)((*node.types[:-1], _array_of_last(node.types[-1])))
    return ArrayOf(node)


# ----------------------------------------------------------------------------- the file

_JSON = """\
export type Json =
  | string
  | number
  | boolean
  | null
  | { [key: string]: Json | undefined }
  | Json[]
"""
# The helpers every generated file ends with (`Tables<"generations">` and friends), as
# prettier lays them out; they only depend on the default schema, `public`.
_HELPERS = """\
type DatabaseWithoutInternals = Omit<Database, "__InternalSupabase">

type DefaultSchema = DatabaseWithoutInternals[Extract<keyof Database, "public">]

export type Tables<
  DefaultSchemaTableNameOrOptions extends
    | keyof (DefaultSchema["Tables"] & DefaultSchema["Views"])
    | { schema: keyof DatabaseWithoutInternals },
  TableName extends (DefaultSchemaTableNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals
  }
    ? keyof (DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"] &
        DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Views"])
    : never) = never,
> = DefaultSchemaTableNameOrOptions extends {
  schema: keyof DatabaseWithoutInternals
}
  ? (DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"] &
      DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Views"])[TableName] extends {
      Row: infer R
    }
    ? R
    : never
  : DefaultSchemaTableNameOrOptions extends keyof (DefaultSchema["Tables"] &
        DefaultSchema["Views"])
    ? (DefaultSchema["Tables"] &
        DefaultSchema["Views"])[DefaultSchemaTableNameOrOptions] extends {
        Row: infer R
      }
      ? R
      : never
    : never

export type TablesInsert<
  DefaultSchemaTableNameOrOptions extends
    keyof DefaultSchema["Tables"] | { schema: keyof DatabaseWithoutInternals },
  TableName extends (DefaultSchemaTableNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals
  }
    ? keyof DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"]
    : never) = never,
> = DefaultSchemaTableNameOrOptions extends {
  schema: keyof DatabaseWithoutInternals
}
  ? DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"][TableName] extends {
      Insert: infer I
    }
    ? I
    : never
  : DefaultSchemaTableNameOrOptions extends keyof DefaultSchema["Tables"]
    ? DefaultSchema["Tables"][DefaultSchemaTableNameOrOptions] extends {
        Insert: infer I
      }
      ? I
      : never
    : never

export type TablesUpdate<
  DefaultSchemaTableNameOrOptions extends
    keyof DefaultSchema["Tables"] | { schema: keyof DatabaseWithoutInternals },
  TableName extends (DefaultSchemaTableNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals
  }
    ? keyof DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"]
    : never) = never,
> = DefaultSchemaTableNameOrOptions extends {
  schema: keyof DatabaseWithoutInternals
}
  ? DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"][TableName] extends {
      Update: infer U
    }
    ? U
    : never
  : DefaultSchemaTableNameOrOptions extends keyof DefaultSchema["Tables"]
    ? DefaultSchema["Tables"][DefaultSchemaTableNameOrOptions] extends {
        Update: infer U
      }
      ? U
      : never
    : never

export type Enums<
  DefaultSchemaEnumNameOrOptions extends
    keyof DefaultSchema["Enums"] | { schema: keyof DatabaseWithoutInternals },
  EnumName extends (DefaultSchemaEnumNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals
  }
    ? keyof DatabaseWithoutInternals[DefaultSchemaEnumNameOrOptions["schema"]]["Enums"]
    : never) = never,
> = DefaultSchemaEnumNameOrOptions extends {
  schema: keyof DatabaseWithoutInternals
}
  ? DatabaseWithoutInternals[DefaultSchemaEnumNameOrOptions["schema"]]["Enums"][EnumName]
  : DefaultSchemaEnumNameOrOptions extends keyof DefaultSchema["Enums"]
    ? DefaultSchema["Enums"][DefaultSchemaEnumNameOrOptions]
    : never

export type CompositeTypes<
  PublicCompositeTypeNameOrOptions extends
    | keyof DefaultSchema["CompositeTypes"]
    | { schema: keyof DatabaseWithoutInternals },
  CompositeTypeName extends (PublicCompositeTypeNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals
  }
    ? keyof DatabaseWithoutInternals[PublicCompositeTypeNameOrOptions["schema"]]["CompositeTypes"]
    : never) = never,
> = PublicCompositeTypeNameOrOptions extends {
  schema: keyof DatabaseWithoutInternals
}
  ? DatabaseWithoutInternals[PublicCompositeTypeNameOrOptions["schema"]]["CompositeTypes"][CompositeTypeName]
  : PublicCompositeTypeNameOrOptions extends keyof DefaultSchema["CompositeTypes"]
    ? DefaultSchema["CompositeTypes"][PublicCompositeTypeNameOrOptions]
    : never
"""


def generate(conn: psycopg.Connection[Any], schemas: Sequence[str] = DEFAULT_SCHEMAS) -> str:
    """The TypeScript module for the database behind ``conn`` (schemas it lacks are left
    out). The same catalog always gives the same text: everything is sorted."""
    template = _Template(read_catalog(conn, schemas))
    database = render(["export type Database = ", to_doc(template.database())])
    constants = render(["export const Constants = ", to_doc(template.constants()), " as const"])
    parts = [_JSON, database + "\n", _HELPERS, constants + "\n", _portraitkit(template.catalog)]
    return "\n".join(parts)


def _portraitkit(catalog: Catalog) -> str:
    """What portraitkit adds after the CLI's output: error codes and row aliases."""
    codes = sorted(ERRORS_BY_CODE, key=collation_key)
    public = {r.name for r in catalog.relations if r.schema == "public"}
    enums = {t.name for t in catalog.types if t.schema == "public" and t.enums}
    lines = [
        "// portraitkit: the stable `code` of every error the contract answers with, and the",
        "// HTTP status that comes with it (portraitkit.errors).",
        "export type ErrorCode =",
        *(f"  | {string(code).text}" for code in codes),
        "",
        "export const ERROR_STATUS: Record<ErrorCode, number> = {",
        *(f"  {_key(code)}: {ERRORS_BY_CODE[code].http_status}," for code in codes),
        "}",
        "",
        *(
            f'export type {a} = Tables<"{name}">'
            for a, name in ROW_ALIASES.items()
            if name in public
        ),
        *(
            f'export type {a} = Enums<"{name}">'
            for a, name in ENUM_ALIASES.items()
            if name in enums
        ),
    ]
    return "\n".join(lines) + "\n"
