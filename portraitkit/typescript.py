"""TypeScript types for the app, read from the live database's catalog.

The first part of the output is, byte for byte, what ``supabase gen types typescript`` prints
for the same database: the CLI runs postgres-meta's typescript template (v0.96.6) in Docker
and formats it with prettier (``semi: false``). We read the same catalog facts with psycopg
and lay them out with a small copy of prettier's line-fitting printer, so no Docker and no
Node are needed. postgres-meta's quirks are kept on purpose (columns and arguments sorted
by name, ``RETURNS TABLE`` fields never nullable, defaults making arguments optional), so
the file can be swapped with the CLI's without a diff. One fix from later postgres-meta is
taken: a ``ROWS 1`` set-returning function keeps its array type unless it returns a table.

After it come portraitkit's own exports: the contract's error codes with their HTTP status,
and short aliases for the rows the app reads.

One module on purpose (over the usual size): catalog, type mapping and printer are one
generator, and splitting them would scatter what one reader needs to compare it with
postgres-meta.
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
# Shorthands the app imports, each emitted only when its relation or enum exists in public.
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
_INPUT_MODES = {"i": "in", "b": "inout", "v": "variadic"}

# --------------------------------------------------------------------------- the catalog

_SCHEMAS_SQL = """
select n.nspname as name from pg_namespace n
where n.nspname = any(%(schemas)s)
  and (pg_has_role(n.nspowner, 'USAGE') or has_schema_privilege(n.oid, 'CREATE, USAGE'))
"""
# Tables are listed only when visible to us (as postgres-meta does); views always.
_RELATIONS_SQL = """
select c.oid::int8 as oid, n.nspname as schema, c.relname as name, c.relkind::text as kind,
       c.relkind = 'v' and (pg_relation_is_updatable(c.oid, false) & 20) = 20 as updatable
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = any(%(schemas)s) and c.relkind in ('r', 'p', 'f', 'v', 'm')
  and (c.relkind not in ('r', 'p') or pg_has_role(c.relowner, 'USAGE')
       or has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
       or has_any_column_privilege(c.oid, 'SELECT, INSERT, UPDATE, REFERENCES'))
"""
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
select p.oid::int8 as oid, n.nspname as schema, p.proname as name,
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
# Every type (system ones too): arguments and return types are looked up by oid or name.
_TYPES_SQL = """
select t.oid::int8 as oid, t.typname as name, n.nspname as schema,
       format_type(t.oid, null) as format, nullif(t.typrelid, 0)::int8 as relation,
       coalesce((select array_agg(e.enumlabel order by e.enumsortorder)
                 from pg_enum e where e.enumtypid = t.oid), '{}') as enums,
       coalesce((select array_agg(a.attname::text order by a.attnum)
                 from pg_class c join pg_attribute a on a.attrelid = c.oid
                 where c.oid = t.typrelid and c.relkind = 'c' and not a.attisdropped),
                '{}') as attribute_names,
       coalesce((select array_agg(a.atttypid::int8 order by a.attnum)
                 from pg_class c join pg_attribute a on a.attrelid = c.oid
                 where c.oid = t.typrelid and c.relkind = 'c' and not a.attisdropped),
                '{}') as attribute_types
from pg_type t join pg_namespace n on n.oid = t.typnamespace
where t.typrelid = 0
   or (select c.relkind in ('c', 'r', 'v', 'm', 'p') from pg_class c where c.oid = t.typrelid)
order by t.oid
"""
# Foreign keys as PostgREST sees them; one-to-one when the columns are a primary or unique key.
_FOREIGN_KEYS_SQL = """
select k.conname as name, n.nspname as schema, c.relname as relation,
       k.conrelid::int8 as relation_oid, k.conkey::int[] as keys,
       array(select a.attname::text from unnest(k.conkey) with ordinality u(num, i)
             join pg_attribute a on a.attrelid = k.conrelid and a.attnum = u.num
             order by u.i) as columns,
       rn.nspname as referenced_schema, r.relname as referenced_relation,
       k.confrelid::int8 as referenced_oid, k.confkey::int[] as referenced_keys,
       array(select a.attname::text from unnest(k.confkey) with ordinality u(num, i)
             join pg_attribute a on a.attrelid = k.confrelid and a.attnum = u.num
             order by u.i) as referenced_columns,
       exists (select from pg_constraint u
               where u.conrelid = k.conrelid and u.contype in ('p', 'u')
                 and (select array_agg(x order by x) from unnest(u.conkey) x) = k.conkey)
         as one_to_one
from pg_constraint k
join pg_class c on c.oid = k.conrelid join pg_namespace n on n.oid = c.relnamespace
join pg_class r on r.oid = k.confrelid join pg_namespace rn on rn.oid = r.relnamespace
where k.contype = 'f' and k.conparentid = 0 and n.nspname <> all(%(system)s)
"""
_VIEW_RULES_SQL = """
select c.oid::int8 as oid, r.ev_action::text as action
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
join pg_rewrite r on r.ev_class = c.oid
where c.relkind in ('v', 'm') and n.nspname <> all(%(system)s)
"""


@dataclass(frozen=True)
class Column:
    name: str
    number: int
    type_name: str  # the base type's name for a domain, as postgres-meta reports it
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


@dataclass(frozen=True)
class Arg:
    name: str
    mode: str  # in, out, inout, variadic, table
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
    """What the generator needs to know about the database, read in one transaction."""

    schemas: list[str]
    relations: list[Relation]
    functions: list[Function]
    types: list[PgType]
    relationships: list[Relationship]


def read_catalog(conn: psycopg.Connection[Any], schemas: Sequence[str]) -> Catalog:
    params = {"schemas": list(schemas), "system": _SYSTEM_SCHEMAS}
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:

        def rows(query: str) -> list[dict[str, Any]]:
            cur.execute(query.encode(), params)
            return cur.fetchall()

        found = [row["name"] for row in rows(_SCHEMAS_SQL)]
        relations = {row["oid"]: Relation(**row) for row in rows(_RELATIONS_SQL)}
        for row in rows(_COLUMNS_SQL):
            if (owner := relations.get(row.pop("relation"))) is not None:
                owner.columns.append(Column(**row))
        functions = [_function(row) for row in rows(_FUNCTIONS_SQL)]
        types = [_pg_type(row) for row in rows(_TYPES_SQL)]
        foreign_keys = rows(_FOREIGN_KEYS_SQL)
        view_columns = {row["oid"]: _view_columns(row["action"]) for row in rows(_VIEW_RULES_SQL)}
    return Catalog(
        schemas=sorted(found, key=collation_key),
        relations=list(relations.values()),
        functions=functions,
        types=types,
        relationships=_relationships(foreign_keys, view_columns, relations),
    )


def _function(row: dict[str, Any]) -> Function:
    count = len(row["arg_types"])
    modes = row["arg_modes"] or ["i"] * count
    names = row["arg_names"] or [""] * count
    args, position = [], 0
    for name, mode, type_oid in zip(names, modes, row["arg_types"], strict=True):
        has_default = False
        if mode in _INPUT_MODES:
            has_default = position >= row["required_inputs"]
            position += 1
        kind = _INPUT_MODES.get(mode) or {"o": "out", "t": "table"}[mode]
        args.append(Arg(name, kind, type_oid, has_default))
    return Function(
        schema=row["schema"],
        name=row["name"],
        args=tuple(sorted(args, key=lambda arg: collation_key(arg.name))),
        **{key: row[key] for key in _FUNCTION_FIELDS},
    )


_FUNCTION_FIELDS = (
    "argument_types",
    "return_type",
    "return_type_oid",
    "return_relation",
    "returns_set",
    "row_estimate",
)


def _pg_type(row: dict[str, Any]) -> PgType:
    attributes = tuple(zip(row.pop("attribute_names"), row.pop("attribute_types"), strict=True))
    return PgType(**{**row, "enums": tuple(row["enums"])}, attributes=attributes)


def _view_columns(action: str) -> dict[int, tuple[int, int]]:
    """Each column of a view (by number) and the table column it shows unchanged.

    A stored view is its query tree as text; the top query's target list records for every
    plain column reference where it comes from (``resorigtbl``, ``resorigcol``), even through
    joins and subqueries. This is how PostgREST finds relationships through views.
    """
    origins: dict[int, tuple[int, int]] = {}
    depth, entry, key, in_targets = 0, {}, None, False
    tokens: list[tuple[int, str]] = []
    word: list[str] = []
    chars = iter(action)
    for char in chars:
        if char == "\\":
            word.append(next(chars, ""))
            continue
        if char in " \n\t(){}":
            if word:
                tokens.append((depth, "".join(word)))
                word = []
            if char in "({":
                tokens.append((depth, char))
                depth += 1
            elif char in ")}":
                depth -= 1
                tokens.append((depth, char))
        else:
            word.append(char)
    for level, token in tokens:
        if level == 2 and token == ":targetList":
            in_targets = True
        elif in_targets and level == 2 and token != "(":
            break  # the end of the list, or an empty one (`<>`)
        elif in_targets and level == 3 and token == "}":
            if entry.get(":resorigtbl"):
                origins[entry[":resno"]] = (entry[":resorigtbl"], entry[":resorigcol"])
            entry = {}
        elif in_targets and level == 4:
            if key is not None:
                entry[key] = int(token) if token.lstrip("-").isdigit() else 0
                key = None
            elif token in (":resno", ":resorigtbl", ":resorigcol"):
                key = token
    return origins


def _relationships(
    foreign_keys: list[dict[str, Any]],
    view_columns: dict[int, dict[int, tuple[int, int]]],
    relations: dict[int, Relation],
) -> list[Relationship]:
    """Foreign keys, plus the same keys seen through views that show all of their columns."""
    exposed: dict[int, dict[tuple[int, int], list[str]]] = {}
    for view in relations.values():
        if view.oid not in view_columns:
            continue
        shown: dict[tuple[int, int], list[str]] = defaultdict(list)
        for column in sorted(view.columns, key=lambda column: column.number):
            origin, seen = view_columns[view.oid].get(column.number), {view.oid}
            while origin is not None and origin[0] not in seen:
                shown[origin].append(column.name)
                seen.add(origin[0])
                origin = view_columns.get(origin[0], {}).get(origin[1])
        exposed[view.oid] = shown
    views = sorted((relations[oid] for oid in exposed), key=lambda v: (v.schema, v.name))

    def through(table: int, keys: list[int]) -> list[tuple[Relation, tuple[str, ...]]]:
        return [
            (view, names)
            for view in views
            if all((table, key) in exposed[view.oid] for key in keys)
            for names in itertools.product(*(exposed[view.oid][(table, key)] for key in keys))
        ]

    tables, through_views = [], []
    for key in foreign_keys:
        base = Relationship(
            key["name"],
            key["schema"],
            key["relation"],
            tuple(key["columns"]),
            key["one_to_one"],
            key["referenced_schema"],
            key["referenced_relation"],
            tuple(key["referenced_columns"]),
        )
        sources = through(key["relation_oid"], key["keys"])
        targets = through(key["referenced_oid"], key["referenced_keys"])
        tables.append(base)
        through_views += [
            replace(base, schema=v.schema, relation=v.name, columns=c) for v, c in sources
        ]
        through_views += [
            replace(base, referenced_schema=v.schema, referenced_relation=v.name,
                    referenced_columns=c)
            for v, c in targets
        ]  # fmt: skip
        through_views += [
            replace(base, schema=v.schema, relation=v.name, columns=c, referenced_schema=w.schema,
                    referenced_relation=w.name, referenced_columns=d)
            for v, c in sources
            for w, d in targets
        ]  # fmt: skip
    return sorted(
        tables + through_views,
        key=lambda r: (
            collation_key(r.name),
            collation_key(r.referenced_relation),
            collation_key(json.dumps(list(r.referenced_columns), separators=(",", ":"))),
        ),
    )


def collation_key(text: str) -> tuple[Any, ...]:
    """Sort like JavaScript's ``localeCompare`` (ICU root order) for identifier-like text:
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


# ----------------------------------------------------------------------- TypeScript types


@dataclass(frozen=True)
class Lit:
    """A type printed as it is: a keyword, a string literal, an indexed access."""

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
    expanded: bool = False  # postgres-meta put a newline after `{`: prettier keeps it broken
    expression: bool = False  # an object literal (`Constants`), not a type


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
NEVER_MAP = Lit("{ [_ in never]: never }")  # an empty section, always printed on 3 lines


def union(types: Iterable[Node]) -> Node:
    flat = tuple(
        itertools.chain.from_iterable(t.types if isinstance(t, Union) else (t,) for t in types)
    )
    return flat[0] if len(flat) == 1 else Union(flat)


def nullable(node: Node) -> Node:
    return node if node == UNKNOWN else union((node, NULL))


def string(value: str) -> Lit:
    """A string literal quoted as prettier would: double quotes unless that means more escapes."""
    content = json.dumps(value, ensure_ascii=False)[1:-1]
    if content.count('"') <= content.count("'"):
        return Lit(f'"{content}"')
    return Lit("'" + content.replace('\\"', '"').replace("'", "\\'") + "'")


def obj(members: Iterable[tuple[str, Node] | Member], *, expanded: bool = True) -> Obj:
    return Obj(tuple(m if isinstance(m, Member) else Member(*m) for m in members), expanded)


# --------------------------------------------------------------- a printer like prettier's


@dataclass(frozen=True)
class Line:
    soft: bool = False  # nothing when flat (a plain line is a space)
    hard: bool = False


@dataclass(frozen=True)
class Indent:
    contents: Doc
    width: int = 2


@dataclass(frozen=True)
class IfBreak:
    broken: Doc
    flat: Doc = ""


class Group:
    """Printed on one line if it fits, else with its lines broken; a group that must break
    (or holds one that must) breaks every group around it, as prettier propagates breaks."""

    def __init__(self, contents: Doc, *, should_break: bool = False) -> None:
        self.contents = contents
        self.broken = should_break or _forces_break(contents)


Doc = str | list["Doc"] | Line | Indent | IfBreak | Group
LINE, SOFTLINE, HARDLINE = Line(), Line(soft=True), Line(hard=True)
WIDTH = 80


def _forces_break(doc: Doc) -> bool:
    if isinstance(doc, list):
        return any(_forces_break(part) for part in doc)
    if isinstance(doc, Group):
        return doc.broken
    if isinstance(doc, Indent):
        return _forces_break(doc.contents)
    if isinstance(doc, IfBreak):
        return _forces_break(doc.broken) or _forces_break(doc.flat)
    return isinstance(doc, Line) and doc.hard


def _text_width(text: str) -> int:
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


_Command = tuple[int, bool, Doc]  # indentation, flat?, doc


def _fits(command: _Command, rest: list[_Command], width: int) -> bool:
    """Whether ``command`` printed flat, and what follows it up to the next line break,
    stays within ``width`` (prettier's ``fits``)."""
    stack, rest_index, pending_space = [command], len(rest), False
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
                width -= _text_width(doc) + pending_space
                pending_space = False
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
            pending_space = True
    return False


def render(doc: Doc) -> str:
    out: list[str] = []
    position = 0
    commands: list[_Command] = [(0, False, doc)]
    while commands:
        indent, flat, doc = commands.pop()
        if isinstance(doc, str):
            out.append(doc)
            position += _text_width(doc)
        elif isinstance(doc, list):
            commands.extend((indent, flat, part) for part in reversed(doc))
        elif isinstance(doc, Indent):
            commands.append((indent + doc.width, flat, doc.contents))
        elif isinstance(doc, Group):
            fits = flat or (
                not doc.broken and _fits((indent, True, doc.contents), commands, WIDTH - position)
            )
            commands.append((indent, fits and not doc.broken, doc.contents))
        elif isinstance(doc, IfBreak):
            commands.append((indent, flat, doc.flat if flat else doc.broken))
        elif flat and not doc.hard:
            if not doc.soft:
                out.append(" ")
                position += 1
        else:
            while out and out[-1].endswith((" ", "\t")):  # no trailing whitespace
                out[-1] = out[-1].rstrip(" \t")
                if not out[-1]:
                    out.pop()
            out.append("\n" + " " * indent)
            position = indent
    return "".join(out)


def _key(name: str) -> str:
    """Property names unquoted where prettier unquotes them (ES5 identifier names)."""
    quoted = string(name).text
    plain = name.replace("$", "_")
    return name if plain.isidentifier() and quoted[1:-1] == name else quoted


def to_doc(node: Node) -> Doc:
    if isinstance(node, Lit):
        if node is NEVER_MAP:
            return Group(["{", Indent([LINE, "[_ in never]: never"]), LINE, "}"], should_break=True)
        return node.text
    if isinstance(node, Obj):
        if not node.members:
            return "{}"
        separator: Doc = [",", LINE] if node.expression else [IfBreak("", ";"), LINE]
        members: list[Doc] = []
        for member in node.members:
            members += [separator] if members else []
            members.append([_key(member.key), "?" if member.optional else "", ": "])
            members.append(to_doc(member.type))
        trailing = IfBreak(",") if node.expression else ""
        return Group(
            ["{", Indent([LINE, *members]), trailing, LINE, "}"], should_break=node.expanded
        )
    if isinstance(node, Union):
        return _union_doc(node)
    if isinstance(node, ArrayOf):
        element = to_doc(node.element)
        if isinstance(node.element, Union) and not _hugs(node.element):
            element = ["(", Group([Indent([SOFTLINE, _union_doc(node.element, bare=True)]),
                                   SOFTLINE]), ")"]  # fmt: skip
        return [element, "[]"]
    if isinstance(node, Tuple):
        if not node.items:
            return "[]"
        items = list(itertools.chain.from_iterable(([",", LINE], to_doc(i)) for i in node.items))
        return Group(["[", Indent([SOFTLINE, *items[1:]]), IfBreak(","), SOFTLINE, "]"])
    first, *others = (to_doc(t) for t in node.types)
    return Group([first, *itertools.chain.from_iterable((" & ", d) for d in others)])


def _hugs(node: Union) -> bool:
    """`{ ... } | null` and `Json | null` are printed inline, never one member a line."""
    objects = [t for t in node.types if isinstance(t, Obj) or (isinstance(t, Lit) and t.reference)]
    return bool(objects) and all(t is objects[0] or t == NULL for t in node.types)


def _union_doc(node: Union, *, bare: bool = False) -> Doc:
    if _hugs(node):
        return list(itertools.chain.from_iterable((" | ", to_doc(t)) for t in node.types))[1:]
    parts: list[Doc] = []
    for index, member in enumerate(node.types):
        parts += [IfBreak("| ") if index == 0 else [LINE, "| "], Indent(to_doc(member), width=2)]
    printed = Group(parts)
    return printed if bare else Group(Indent([SOFTLINE, printed]))


# -------------------------------------------------------- the catalog as postgres-meta types

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
    ),  # fmt: skip
    "void": "undefined",
}


def _ref(*path: str) -> Lit:
    return Lit("Database" + "".join(f"[{string(part).text}]" for part in path))


class _Builder:
    """postgres-meta's typescript template, as type nodes instead of text."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.types = {t.oid: t for t in catalog.types}
        self.relation_names = {r.oid: r.name for r in catalog.relations}
        by_schema: dict[str, list[Function]] = defaultdict(list)
        for fn in sorted(catalog.functions, key=lambda fn: collation_key(fn.name)):
            if self._exposed(fn):
                by_schema[fn.schema].append(fn)
        self.functions = by_schema

    def ts_type(self, schema: str, name: str) -> Node:
        """The TypeScript for a PostgreSQL type, found by name as postgres-meta finds it."""
        if name in ("json", "jsonb"):
            return Lit("Json", reference=True)
        if name == "record":
            return Lit("Record<string, unknown>", reference=True)
        if name in _SCALARS:
            return Lit(_SCALARS[name])
        if name.startswith("_"):
            return ArrayOf(self.ts_type(schema, name[1:]))
        enum = self._named(schema, (t for t in self.catalog.types if t.name == name and t.enums))
        if enum is not None:
            if enum.schema in self.catalog.schemas:
                return _ref(enum.schema, "Enums", enum.name)
            return union(string(label) for label in enum.enums)
        candidates: list[tuple[str, Iterable[Any]]] = [
            ("CompositeTypes", (t for t in self.catalog.types if t.name == name and t.attributes)),
            ("Tables", (r for r in self.catalog.relations if r.name == name and r.kind in "rp")),
            ("Views", (r for r in self.catalog.relations if r.name == name and r.kind == "v")),
        ]
        for section, found in candidates:
            match = self._named(schema, found)
            if match is not None:
                if match.schema not in self.catalog.schemas:
                    return UNKNOWN
                if section == "CompositeTypes":
                    return _ref(match.schema, section, match.name)
                return _ref(match.schema, section, match.name, "Row")
        return UNKNOWN

    @staticmethod
    def _named(schema: str, found: Iterable[Any]) -> Any:
        """The one in ``schema`` if there is one, else the first."""
        found = list(found)
        return next((f for f in found if f.schema == schema), found[0] if found else None)

    def type_of(self, schema: str, oid: int) -> Node:
        pg_type = self.types.get(oid)
        return UNKNOWN if pg_type is None else self.ts_type(schema, pg_type.name)

    def _exposed(self, fn: Function) -> bool:
        """Whether PostgREST can call it: named inputs, or a lone unnamed json/text/row one."""
        inputs = fn.inputs
        unnamed = [arg for arg in inputs if not arg.name]
        if not unnamed or all(a.has_default and a.type_oid in _UNNAMED_ARG_TYPES for a in unnamed):
            return True
        return len(inputs) == 1 and (
            inputs[0].type_oid in _UNNAMED_ARG_TYPES or self._row_type(inputs[0].type_oid)
        )

    def _row_type(self, oid: int) -> PgType | None:
        pg_type = self.types.get(oid)
        return pg_type if pg_type is not None and pg_type.relation else None

    def _returned_relation(self, fn: Function) -> str | None:
        if not fn.return_relation:
            return None
        if fn.return_relation in self.relation_names:
            return self.relation_names[fn.return_relation]
        row_type = self._row_type(fn.return_type_oid)
        return row_type.name if row_type else None

    # ------------------------------------------------------------------ relations

    def column(self, schema: str, column: Column, *, optional: bool, nullable_: bool) -> Member:
        node = self.ts_type(schema, column.type_name)
        return Member(column.name, nullable(node) if nullable_ else node, optional)

    def columns(self, relation: Relation) -> list[Column]:
        return sorted(relation.columns, key=lambda column: collation_key(column.name))

    def row(self, relation: Relation) -> Obj:
        schema = relation.schema
        members = [
            self.column(schema, c, optional=False, nullable_=c.nullable)
            for c in self.columns(relation)
        ]
        members += [
            Member(fn.name, nullable(self.returns(schema, fn)))
            for fn in self.functions[schema]
            if fn.argument_types == relation.name
        ]  # computed fields: functions of the row
        return obj(members)

    def writes(self, relation: Relation, *, insert: bool) -> Obj:
        members = []
        for c in self.columns(relation):
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

    def relationships(self, relation: Relation) -> Tuple:
        return Tuple(
            tuple(
                obj(
                    [
                        ("foreignKeyName", string(r.name)),
                        ("columns", Tuple(tuple(string(c) for c in r.columns))),
                        ("isOneToOne", Lit("true" if r.one_to_one else "false")),
                        ("referencedRelation", string(r.referenced_relation)),
                        (
                            "referencedColumns",
                            Tuple(tuple(string(c) for c in r.referenced_columns)),
                        ),
                    ]
                )
                for r in self.catalog.relationships
                if r.schema == relation.schema == r.referenced_schema
                and r.relation == relation.name
            )
        )

    def relation(self, relation: Relation) -> Obj:
        members = [("Row", self.row(relation))]
        if relation.kind in "rpf" or relation.updatable:
            members += [
                ("Insert", self.writes(relation, insert=True)),
                ("Update", self.writes(relation, insert=False)),
            ]
        return obj([*members, ("Relationships", self.relationships(relation))])

    # ------------------------------------------------------------------ functions

    def returns(self, schema: str, fn: Function) -> Node:
        table = [arg for arg in fn.args if arg.mode == "table"]
        if table:
            return obj((arg.name, self.type_of(schema, arg.type_oid)) for arg in table)
        relation = next(
            (
                r
                for r in self.catalog.relations
                if r.oid == fn.return_relation and r.schema == schema
            ),
            None,
        )
        if relation is not None:
            return obj(
                self.column(schema, c, optional=False, nullable_=c.nullable)
                for c in self.columns(relation)
            )
        return self.type_of(schema, fn.return_type_oid)

    def setof_options(self, fn: Function, returned: str | None, many: bool) -> Obj | None:
        """What supabase-js needs to embed or select into a function's rows."""
        options = None
        if returned:
            options = ("*", returned, not many, fn.returns_set)
        row_type = self._row_type(fn.args[0].type_oid) if len(fn.args) == 1 else None
        if row_type is not None and returned:
            in_set = fn.returns_set and fn.return_relation is not None
            options = (row_type.format, returned, not many if in_set else True, in_set)
        if options is None:
            return None
        source, target, one, in_set = options
        return obj(
            [
                ("from", string(source)),
                ("to", string(target)),
                ("isOneToOne", Lit("true" if one else "false")),
                ("isSetofReturn", Lit("true" if in_set else "false")),
            ]
        )

    def problem(self, schema: str, fns: list[Function], fn: Function) -> str | None:
        """Why PostgREST cannot tell this overload from another, or cannot call it."""
        inputs = fn.inputs
        others = [other for other in fns if other is not fn]
        if not inputs:
            clash = [o for o in others if len(o.inputs) == 1 and not o.inputs[0].name
                     and o.inputs[0].has_default]  # fmt: skip
            if clash:
                pg_type = self.types.get(clash[0].return_type_oid)
                returned = pg_type.name if pg_type else "unknown"
                return (f"Could not choose the best candidate function between: {schema}."
                        f"{fn.name}(), {schema}.{fn.name}( => {returned}). {_RENAME}")  # fmt: skip
        elif len(inputs) == 1 and inputs[0].name:
            clash = [o for o in others if len(o.inputs) == 1 and o.inputs[0].name == inputs[0].name
                     and o.inputs[0].type_oid != inputs[0].type_oid]  # fmt: skip
            if clash:
                listed = sorted([fn, *clash], key=lambda f: f.inputs[0].type_oid)
                calls = ", ".join(
                    f"{schema}.{fn.name}("
                    + ", ".join(f"{a.name} => {self._type_name(a.type_oid)}" for a in f.inputs)
                    + ")"
                    for f in listed
                )
                return f"Could not choose the best candidate function between: {calls}. {_RENAME}"
        if (len(inputs) == 1 and not inputs[0].name and self._row_type(inputs[0].type_oid)
                and not self._returned_relation(fn)):  # fmt: skip
            return (f"the function {schema}.{fn.name} with parameter or with a single unnamed "
                    "json/jsonb parameter, but no matches were found in the schema cache")  # fmt: skip
        return None

    def _type_name(self, oid: int) -> str:
        pg_type = self.types.get(oid)
        return pg_type.name if pg_type else "unknown"

    def signature(self, schema: str, fns: list[Function], fn: Function) -> Obj:
        inputs = fn.inputs
        args: Node = NEVER
        if inputs:
            args = Obj(
                tuple(
                    Member(a.name, self.type_of(schema, a.type_oid), a.has_default) for a in inputs
                )
            )
        problem = self.problem(schema, fns, fn)
        returns = (
            Intersection((Obj((Member("error", Lit("true")),)), string(problem)))
            if problem
            else self.returns(schema, fn)
        )
        returned = self._returned_relation(fn)
        many = fn.row_estimate is not None and fn.row_estimate > 1
        if fn.returns_set and (many or returned is None):
            returns = _array_of_last(returns)
        members = [Member("Args", args), Member("Returns", returns)]
        options = self.setof_options(fn, returned, many)
        if options is not None:
            members.append(Member("SetofOptions", options))
        return Obj(tuple(members))

    def functions_node(self, schema: str) -> Node:
        if not self.functions[schema]:
            return NEVER_MAP
        members = []
        for name, group in itertools.groupby(self.functions[schema], key=lambda fn: fn.name):
            fns = sorted(
                group, key=lambda f: (collation_key(f.argument_types), collation_key(f.return_type))
            )
            members.append((name, union(self.signature(schema, fns, fn) for fn in fns)))
        return obj(members)

    # ------------------------------------------------------------------ schemas

    def schema_node(self, schema: str) -> Obj:
        relations = sorted(
            (r for r in self.catalog.relations if r.schema == schema),
            key=lambda r: collation_key(r.name),
        )
        tables = [(r.name, self.relation(r)) for r in relations if r.kind in "rpf"]
        views = [(r.name, self.relation(r)) for r in relations if r.kind in "vm"]
        types = sorted(
            (t for t in self.catalog.types if t.schema == schema),
            key=lambda t: collation_key(t.name),
        )
        enums = [(t.name, union(string(label) for label in t.enums)) for t in types if t.enums]
        composites = [
            (t.name, obj((name, nullable(self.type_of(schema, oid))) for name, oid in t.attributes))
            for t in types
            if t.attributes
        ]
        return obj(
            [
                ("Tables", obj(tables) if tables else NEVER_MAP),
                ("Views", obj(views) if views else NEVER_MAP),
                ("Functions", self.functions_node(schema)),
                ("Enums", obj(enums) if enums else NEVER_MAP),
                ("CompositeTypes", obj(composites) if composites else NEVER_MAP),
            ]
        )

    def constants_node(self) -> Obj:
        def enums(schema: str) -> Obj:
            found = sorted(
                (t for t in self.catalog.types if t.schema == schema and t.enums),
                key=lambda t: collation_key(t.name),
            )
            return _literal([(t.name, Tuple(tuple(string(e) for e in t.enums))) for t in found])

        return _literal([(s, _literal([("Enums", enums(s))])) for s in self.catalog.schemas])


_RENAME = (
    "Try renaming the parameters or the function itself in the database so function "
    "overloading can be resolved"
)


def _literal(members: list[tuple[str, Node]]) -> Obj:
    return Obj(tuple(Member(*m) for m in members), expanded=True, expression=True)


def _array_of_last(node: Node) -> Node:
    """postgres-meta appends `[]` to the text of the type, so it binds to the last member."""
    if isinstance(node, Union | Intersection):
        return type(node)((*node.types[:-1], _array_of_last(node.types[-1])))
    return ArrayOf(node)


# -------------------------------------------------------------------------- the file

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
    """The TypeScript module for the database behind ``conn``, schemas missing from it
    left out. The same catalog always gives the same text (everything is sorted)."""
    catalog = read_catalog(conn, schemas)
    builder = _Builder(catalog)
    database = obj((schema, builder.schema_node(schema)) for schema in catalog.schemas)
    parts = [
        _JSON,
        render(["export type Database = ", to_doc(database)]) + "\n",
        _HELPERS,
        render(["export const Constants = ", to_doc(builder.constants_node()), " as const"]) + "\n",
        _portraitkit_exports(catalog),
    ]
    return "\n".join(parts)


def _portraitkit_exports(catalog: Catalog) -> str:
    """What portraitkit adds after the CLI's output: error codes and row aliases."""
    codes = sorted(ERRORS_BY_CODE, key=collation_key)
    lines = [
        "// portraitkit: the stable `code` of every error the contract answers with,",
        "// and the HTTP status it comes with (portraitkit.errors).",
        "export type ErrorCode =",
        *(f"  | {string(code).text}" for code in codes),
        "",
        "export const ERROR_STATUS: Record<ErrorCode, number> = {",
        *(f"  {_key(code)}: {ERRORS_BY_CODE[code].http_status}," for code in codes),
        "}",
        "",
    ]
    public = {r.name for r in catalog.relations if r.schema == "public"}
    enums = {t.name for t in catalog.types if t.schema == "public" and t.enums}
    aliases = [f'export type {a} = Tables<"{n}">' for a, n in ROW_ALIASES.items() if n in public]
    aliases += [f'export type {a} = Enums<"{n}">' for a, n in ENUM_ALIASES.items() if n in enums]
    return "\n".join(lines + aliases) + ("\n" if aliases else "")
