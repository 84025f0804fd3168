"""Gives each INSERT and UPDATE of a row-bound column its row's bound values.

An engine event sees each statement before it runs. Where it sets a column
declared with ``context_columns``, the value is handed to the column type as a
RowBound holding the text of the row's bound columns, taken from the same
statement: the ORM's flush (rows/orm.py makes an UPDATE carry them), its bulk
INSERT and bulk UPDATE, and Core statements with parameters or ``.values()``.
A statement that sets the value without them, or sets a bound column from a SQL
expression, cannot be bound and is refused before it runs: nothing is stored.
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import Update, operators
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, BooleanClauseList, ColumnClause
from sqlalchemy.sql.type_api import TypeDecorator

from ..errors import ConfigurationError
from ..write_hooks import embedded_values, listen_on_writes
from .values import RowBound, text_of

__all__ = ["checked_pairs", "install", "row_bound_columns", "vouch"]

Form = Callable[[Any], Any]  # checks a bound value is in the form its column returns
# column key, the keys it is bound to, its label, and the form of each bound column
Bound = tuple[str, tuple[str, ...], str, tuple[Form, ...]]

_UNSET = object()
_tables: weakref.WeakKeyDictionary[Any, list[Bound]] = weakref.WeakKeyDictionary()
# Per connection: the rows (table, primary key) the ORM is flushing, as it loaded them.
_vouched: weakref.WeakKeyDictionary[Any, set[tuple[Any, tuple[Any, ...]]]] = (
    weakref.WeakKeyDictionary()
)
_VOUCHED_KEPT = 10_000


def row_bound_columns(table: Any) -> list[Bound]:
    """The columns of ``table`` bound to others of its row, with what they are bound to."""
    found = _tables.get(table)
    if found is None:
        found = []
        for column in getattr(table, "columns", ()):
            names = getattr(column.type, "context_columns", ())
            if names:
                missing = [name for name in names if name not in table.c]
                if missing:
                    raise ConfigurationError(
                        f"{table.name}.{column.key} is bound to {', '.join(missing)}, "
                        f"which {table.name} has no column for"
                    )
                label = f"{table.name}.{column.key}"
                forms = tuple(_form_of(table, name, label) for name in names)
                found.append((column.key, names, label, forms))
        _tables[table] = found
    return found


def _form_of(table: Any, name: str, label: str) -> Form:
    """What checks a value of ``table.c[name]`` is in the form the database returns it.

    A value is bound to the text of its row's values as the writer gives them,
    and read under their text as the database returns them: the two must be the
    same. A CHAR is padded (PostgreSQL) or trimmed (MariaDB), a NUMERIC comes back
    a Decimal, a float formatted by the driver; an INTEGER column stores "07" as
    7, a UUID column stores any spelling of a UUID in its own. Such a value would
    be stored and never decrypt again: refused before anything runs.
    """
    type_ = table.c[name].type
    base = _base_type(type_)
    if isinstance(base, sa.types.NullType):
        return _same  # a column of no declared type (sa.table()): taken as given
    if isinstance(base, (sa.CHAR, sa.NCHAR)):
        python: Any = None  # padded or trimmed by the database
    elif isinstance(base, sa.Uuid):
        return _uuid_form(label, name)
    else:
        try:
            python = type_.python_type
        except NotImplementedError:
            python = None
    if python is str:
        return _same
    if python is int:
        return _int_form(label, name)
    raise ConfigurationError(
        f"{label} is bound to {table.name}.{name}, a {type(type_).__name__} column: the "
        "columns a value is bound to must hold str, int or UUID values in a column that "
        "returns them as written (String, Integer, Uuid; not CHAR, Numeric or Float)"
    )


def _base_type(type_: Any) -> Any:
    """The type a TypeDecorator stores as, or ``type_`` itself."""
    return type_.impl_instance if isinstance(type_, TypeDecorator) else type_


def _same(value: Any) -> Any:
    return value


def _not_as_stored(label: str, name: str, kind: str) -> ConfigurationError:
    return ConfigurationError(
        f"{label} is bound to its row's {name}, given here as text that is not {kind} "
        "as the database stores it: the value would not decrypt again; give it as the "
        "column returns it"
    )


def _int_form(label: str, name: str) -> Form:
    def form(value: Any) -> Any:
        if isinstance(value, str) and not (value.isascii() and value == str(_int(value))):
            raise _not_as_stored(label, name, "an integer")
        return value

    return form


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _uuid_form(label: str, name: str) -> Form:
    def form(value: Any) -> Any:
        if isinstance(value, str) and value != str(_uuid(value)):
            raise _not_as_stored(label, name, "a UUID (lowercase, with hyphens)")
        return value

    return form


def _uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def checked_pairs(table: Any, key: str, value_of: Callable[[str], Any]) -> Any:
    """The (name, text) pairs of ``table.c[key]``'s bound values, checked as a write checks them.

    For a lookup (search/lookup.py): a bound value the database would hold in
    another form is refused rather than hashed as given and matched by nothing.
    """
    for bound in row_bound_columns(table):
        if bound[0] == key:
            return _pairs(bound, value_of)
    raise ConfigurationError(f"{table.name}.{key} is not bound to other columns of its row")


def _pairs(bound: Bound, value_of: Callable[[str], Any]) -> Any:
    """The (name, text) pairs of a row's bound values, each checked against its column."""
    _, names, label, forms = bound
    return tuple(
        (name, text_of(label, name, form(value_of(name))))
        for name, form in zip(names, forms, strict=True)
    )


def _missing(label: str, names: tuple[str, ...], absent: list[str]) -> ConfigurationError:
    return ConfigurationError(
        f"a statement sets {label} without its row's {', '.join(absent)}, which its "
        f"values are bound to ({', '.join(names)}): give them in the same statement, "
        "as Python values, or nothing can be stored"
    )


def vouch(connection: Any, table: Any, key: tuple[Any, ...]) -> None:
    """The ORM is about to UPDATE the row of ``table`` whose primary key is ``key``.

    ``key`` holds the values the row was loaded with, exactly as the database
    returned them, and the ORM's UPDATE finds the row by them: its bound columns
    that are part of the key hold exactly those (rows/orm.py calls this).
    """
    seen = _vouched.get(connection)
    if seen is None:
        seen = _vouched[connection] = set()
    elif len(seen) >= _VOUCHED_KEPT:
        seen.clear()
    seen.add((table, key))


class _Scoped(list[Bound]):
    """A table's row-bound columns, with what one statement gives of its rows' bound values.

    Its own ``.values()``: the parameters of an execution override them, so a
    parameter set that gives only the tenant moves a value set there, and one
    that gives only the value takes the tenant set there.

    And for an UPDATE, the columns its WHERE holds equal to a parameter: one
    that leaves a bound column out of SET (the ORM never sets an unchanged
    primary key) still says which value the rows it changes hold there. That
    value binds when it is exact: an int in an integer column or a UUID in a
    Uuid column compare exactly on every database; text only for a row the ORM
    loaded and vouched for, since MariaDB's collations find 'acme' with 'ACME'
    or 'acme '.
    """

    def __init__(
        self,
        columns: Sequence[Bound],
        table: Any,
        embedded: dict[str, Any],
        where: dict[str, BindParameter[Any]],
        seen: Any,
        renamed: dict[str, str],
    ) -> None:
        super().__init__(columns)
        self.table = table
        self.embedded = embedded
        self.renamed = renamed  # column key -> its parameter's, for .values(c=bindparam("x"))
        self.where = where
        self.seen = seen

    def value(self, params: Mapping[str, Any], name: str) -> Any:
        """``name`` for a parameter set without it: from .values(), or the WHERE; or _UNSET."""
        found = self.embedded.get(name, _UNSET)
        if found is not _UNSET:
            return found
        found = _where_value(params, self.where.get(name))
        if found is _UNSET or _exact(self.table.c[name], found):
            return found
        if not self.seen:
            return _UNSET
        key = tuple(
            _where_value(params, self.where.get(column.key))
            for column in self.table.primary_key.columns
        )
        if _UNSET in key or (self.table, key) not in self.seen:
            return _UNSET
        return found


def _where_value(params: Mapping[str, Any], bind: BindParameter[Any] | None) -> Any:
    if bind is None:
        return _UNSET
    if bind.key in params:
        return params[bind.key]
    if bind.callable is not None or bind.required:
        return _UNSET
    return bind.value


def _exact(column: Any, value: Any) -> bool:
    """Whether every database finds only ``value`` itself when comparing ``column`` to it."""
    type_ = column.type
    base = _base_type(type_)
    if isinstance(value, uuid.UUID):
        return isinstance(base, sa.Uuid)
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return type_.python_type is int and not isinstance(base, sa.Numeric)
        except NotImplementedError:
            return False
    return False


def _scope(conn: Any, statement: Any, columns: Sequence[Bound]) -> Sequence[Bound]:
    """``columns``, with what the statement gives of its rows' bound values (``_Scoped``)."""
    given = embedded_values(statement)
    binds = {k: v for k, v in given.items() if isinstance(v, BindParameter) and v.callable is None}
    embedded = {key: bind.value for key, bind in binds.items() if not bind.required}
    renamed = {key: bind.key for key, bind in binds.items() if bind.required and bind.key != key}
    where = _pinned_by_where(statement)
    if not embedded and not where and not renamed:
        return columns
    table = _plain(statement.table)
    return _Scoped(columns, table, embedded, where, _vouched.get(conn), renamed)


def _pinned_by_where(statement: Any) -> dict[str, BindParameter[Any]]:
    """The columns of an UPDATE's table its WHERE requires equal to a parameter."""
    if not isinstance(statement, Update) or statement.whereclause is None:
        return {}
    table = _plain(statement.table)
    clause = statement.whereclause
    parts = (
        clause.clauses
        if isinstance(clause, BooleanClauseList) and clause.operator is operators.and_
        else [clause]
    )
    where: dict[str, BindParameter[Any]] = {}
    for part in parts:
        if not isinstance(part, BinaryExpression) or part.operator is not operators.eq:
            continue
        left, right = part.left, part.right
        if isinstance(left, BindParameter):
            left, right = right, left
        if (
            isinstance(left, ColumnClause)
            and _plain(getattr(left, "table", None)) is table
            and isinstance(right, BindParameter)
        ):
            where.setdefault(left.key, right)
    return where


def _encrypted(table: Any, key: str) -> bool:
    return hasattr(table.c[key].type, "open_row_bound")


def _plain(table: Any) -> Any:
    """``table`` without the ORM's annotations (an ORM statement's table is annotated)."""
    deannotate = getattr(table, "_deannotate", None)
    return deannotate() if deannotate is not None else table


def _bound_params(params: Mapping[str, Any], columns: Sequence[Bound]) -> Mapping[str, Any]:
    """``params`` with each row-bound value it sets made a RowBound."""
    if not isinstance(columns, _Scoped):
        return _bound_plain_params(params, columns)
    replaced: dict[str, Any] = {}
    renamed = columns.renamed
    for bound in columns:
        key, names, label, _ = bound
        if key in renamed and not _encrypted(columns.table, key):
            continue  # a blind index given its digest (reindex): nothing to bind
        value = params.get(renamed.get(key, key), _UNSET)
        given = {
            name: params[renamed.get(name, name)]
            for name in names
            if renamed.get(name, name) in params
        }
        if value is _UNSET and given:
            # Set by .values(), whose bound column these parameters override.
            value = columns.embedded.get(key)
        if value is _UNSET or value is None or type(value) is RowBound:
            continue
        absent = [name for name in names if name not in given]
        if absent:
            pinned = {name: columns.value(params, name) for name in absent}
            if _UNSET in pinned.values():
                raise _missing(label, names, absent)
            given.update(pinned)
        replaced[renamed.get(key, key)] = RowBound(value, _pairs(bound, given.__getitem__))
    return {**params, **replaced} if replaced else params


def _bound_plain_params(params: Mapping[str, Any], columns: Sequence[Bound]) -> Mapping[str, Any]:
    """``_bound_params`` for a statement whose parameter sets give every bound value.

    The ORM's INSERT and UPDATE, once per row: kept to what that case needs,
    since the scoped path's lookups cost the row-bound insert a tenth more.
    """
    replaced: dict[str, Any] = {}
    for bound in columns:
        key, names, label, _ = bound
        value = params.get(key)
        if value is None or type(value) is RowBound:
            continue
        absent = [name for name in names if name not in params]
        if absent:
            raise _missing(label, names, absent)
        replaced[key] = RowBound(value, _pairs(bound, params.__getitem__))
    return {**params, **replaced} if replaced else params


def _embedded(statement: Any, table: Any, columns: Sequence[Bound]) -> Any:
    """The statement with the row-bound values of its ``.values(...)`` made RowBounds."""
    keys = {bound[0] for bound in columns}
    _check_insert(statement, table, columns, keys)
    for rows in getattr(statement, "_multi_values", None) or ():
        for row in rows:
            if {_key_of(target) for target in row} & keys:
                raise ConfigurationError(
                    f"a multi-row VALUES clause sets a row-bound column of {table.name}: "
                    "pass the rows as parameters, conn.execute(table.insert(), rows), so "
                    "each value is bound to its own row"
                )
    given = embedded_values(statement)
    if not given:
        return statement
    replaced: dict[str, Any] = {}
    for bound in columns:
        key, names, label, _ = bound
        value = given.get(key, _UNSET)
        if not isinstance(value, BindParameter) or value.callable is not None:
            if value is not _UNSET and not _is_null(value):
                raise ConfigurationError(
                    f"{label} is set from a SQL expression, which cannot be bound to its "
                    "row: set it from a Python value"
                )
            continue
        if value.value is None or type(value.value) is RowBound:
            continue
        absent = [name for name in names if name not in given]
        if absent:
            raise _missing(label, names, absent)
        plain: dict[str, Any] = {}
        for name in names:
            part = given[name]
            if not isinstance(part, BindParameter) or part.callable is not None:
                raise ConfigurationError(
                    f"{table.name}.{name}, which {label} is bound to, is set from a SQL "
                    "expression: set it from a Python value, or the value cannot be bound"
                )
            plain[name] = part.value
        replaced[key] = RowBound(value.value, _pairs(bound, plain.__getitem__))
    return statement.values(replaced) if replaced else statement


def _check_insert(statement: Any, table: Any, columns: Sequence[Bound], keys: set[str]) -> None:
    """Refuse an INSERT ... SELECT of a row-bound value, and an upsert that moves a row.

    A value copied by a query arrives bound to the row it was read from, whatever
    tenant the new row has; an upsert's ON CONFLICT / ON DUPLICATE KEY UPDATE that
    sets a bound column moves the existing row and leaves its values bound to the
    old one (its encrypted columns cannot be set there: sql_guard refuses them).
    Either would store values that never decrypt again.
    """
    if getattr(statement, "select", None) is not None:
        copied = {_key_of(name) for name in getattr(statement, "_select_names", None) or ()}
        if copied & keys:
            raise ConfigurationError(
                f"{table.name}: from_select() fills a row-bound column, and the values it "
                "copies stay bound to the rows they were read from: read them and write "
                "them as parameters, each under its new row's values"
            )
    clause = getattr(statement, "_post_values_clause", None)
    if clause is None:
        return
    sets = getattr(clause, "update_values_to_set", None)
    if sets is None:
        sets = getattr(clause, "update", None)
    targets = sets.keys() if isinstance(sets, Mapping) else [pair[0] for pair in sets or ()]
    updated = {_key_of(target) for target in targets}
    for key, names, label, _ in columns:
        moved = [name for name in names if name in updated]
        if moved and _encrypted(table, key):
            raise ConfigurationError(
                f"{table.name}: an upsert's update changes {', '.join(moved)}, which the "
                f"values of {label} in the row it updates are bound to: they would become "
                "unreadable; move the row through the ORM, which re-encrypts them"
            )


def _key_of(target: Any) -> Any:
    return target if isinstance(target, str) else getattr(target, "key", None)


def _is_null(value: Any) -> bool:
    return getattr(value, "__visit_name__", None) == "null"


def _check_update(table: Any, columns: Sequence[Bound], keys: set[str]) -> None:
    """Refuse an UPDATE that moves a row's bound columns and leaves values bound to the old.

    Such values would never decrypt again: a value that was accepted must stay
    readable. The ORM sets them again itself when a tenant changes (rows/orm.py);
    a Core UPDATE must set them too (to NULL if the row has none).
    """
    for key, names, label, _ in columns:
        moved = [name for name in names if name in keys]
        if moved and key not in keys and _encrypted(table, key):
            raise ConfigurationError(
                f"{table.name}: a statement changes {', '.join(moved)} without {label}, "
                f"whose values are bound to it and would become unreadable: set {key} in "
                "the same statement, or move the row through the ORM, which re-encrypts it"
            )


def install() -> None:
    """Listen on every Engine (idempotent)."""
    listen_on_writes(row_bound_columns, _embedded, _bound_params, _check_update, _scope)
