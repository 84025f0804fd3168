"""Keeps an ORM object's row-bound values and the columns they are bound to in step.

Three jobs, through SQLAlchemy's mapper and instance events:

- An UPDATE that sets a row-bound value carries the bound columns too (the ORM
  would send only what changed), so rows/sync.py can bind the value to them.
- A bound column that changes re-encrypts the values bound to it, under the new
  values, in the same flush: moving a row to another tenant through the ORM
  keeps its values readable. (A raw UPDATE of the tenant alone leaves them
  unreadable, with an error that says why.)
- A value loaded without its bound columns (a deferred column, ``load_only``)
  arrives as a SealedValue and is opened with the object's bound values as they
  are in the database, not as changed in memory since.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, inspect, select
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.attributes import flag_modified, set_committed_value
from sqlalchemy.orm.base import NO_VALUE, LoaderCallableStatus

from .sync import vouch
from .values import SealedValue

__all__ = ["install"]

# attribute key of the value, attribute keys of the columns it is bound to, and
# whether it is an encrypted value (else a blind index, computed from the value)
Binding = tuple[str, tuple[str, ...], bool]

_ABSENT = object()


def _bindings(mapper: Mapper[Any]) -> list[Binding]:
    found = getattr(mapper, "_sqla_envelope_bindings", None)
    if found is not None:
        return found  # type: ignore[no-any-return]
    found = _bindings_of(mapper)
    mapper._sqla_envelope_bindings = found  # type: ignore[attr-defined]
    return found


def _bindings_of(mapper: Mapper[Any]) -> list[Binding]:
    found: list[Binding] = []
    for prop in mapper.column_attrs:
        column = prop.columns[0]
        names = getattr(column.type, "context_columns", ())
        table = getattr(column, "table", None)
        if not names or table is None:
            continue
        keys = tuple(mapper.get_property_by_column(table.c[name]).key for name in names)
        found.append((prop.key, keys, hasattr(column.type, "open_row_bound")))
    return found


def _before_update(mapper: Mapper[Any], connection: Any, target: Any) -> None:
    bindings = _bindings(mapper)
    if not bindings:
        return
    state = inspect(target)
    changed = state.committed_state
    touched = set(changed)  # what the flush writes, before anything is flagged here
    # The UPDATE carries the bound columns of each value it writes, and a
    # statement that sets a bound column without every value bound to it is
    # refused (rows/sync.py): so every other value bound to one of them is
    # written again with it, until none is left out.
    carried: set[str] = set()
    written: list[tuple[str, tuple[str, ...]]] = []
    grown = True
    while grown:
        grown = False
        for key, bound, encrypted in bindings:
            if (key, bound) in written:
                continue
            hit = key in touched or (
                encrypted and any(name in touched or name in carried for name in bound)
            )
            if hit:
                written.append((key, bound))
                carried.update(bound)
                grown = True
    if not carried:
        return
    encrypted_keys = {key for key, _, encrypted in bindings if encrypted}
    for key, bound in written:
        if key not in encrypted_keys:
            continue  # a blind index set by the application: hashed from its value
        if key not in touched:
            # Read under the values in the database, written under the new ones.
            current = state.dict.get(key, _ABSENT)
            if current is _ABSENT or type(current) is SealedValue:
                current = _as_stored(mapper, connection, state, key, bound)
            # Set again even when NULL: an UPDATE that moves the row must say so.
            set_committed_value(target, key, current)
            flag_modified(target, key)
        _vouch_key(mapper, connection, state, key, bound)
    _carry(target, changed, tuple(sorted(carried)))


def _carry(target: Any, changed: Any, bound: tuple[str, ...]) -> None:
    """Make the UPDATE carry the bound columns, changed or not.

    One changed to another value is carried already, and is left alone:
    flag_modified would replace the value it was loaded with, by which the ORM
    finds a row whose primary key it is (the UPDATE would then look for the new
    key, and match nothing).
    """
    for name in bound:
        value = getattr(target, name)  # loads it if expired: the UPDATE must carry it
        loaded = changed.get(name, NO_VALUE)
        if isinstance(loaded, LoaderCallableStatus) or loaded == value:
            flag_modified(target, name)


def _vouch_key(
    mapper: Mapper[Any], connection: Any, state: Any, key: str, bound: tuple[str, ...]
) -> None:
    """Vouch for the row's primary key when a bound column is part of it.

    The ORM sends an unchanged primary key in the UPDATE's WHERE, never in its
    SET: rows/sync.py then takes the bound value from there, for a row vouched
    for with the values it was loaded with.
    """
    table: Any = mapper.column_attrs[key].columns[0].table
    columns = mapper.column_attrs
    if not any(columns[name].columns[0].primary_key for name in bound):
        return
    values = []
    for column in table.primary_key.columns:
        name = mapper.get_property_by_column(column).key
        # As loaded: a key changed in memory is found by its old value.
        value = state.committed_state.get(name, _ABSENT)
        if value is _ABSENT or isinstance(value, LoaderCallableStatus):  # flag_modified's mark
            value = state.dict.get(name, _ABSENT)
        if value is _ABSENT or isinstance(value, LoaderCallableStatus):
            return
        values.append(value)
    vouch(connection, table, tuple(values))


def _as_stored(
    mapper: Mapper[Any], connection: Any, state: Any, key: str, bound: tuple[str, ...]
) -> Any:
    """A value as its row in the database holds it, read with the columns it is bound to.

    For a value not loaded (expired, deferred) whose row's bound columns changed in
    memory: the object no longer knows what the value was bound to; the row does.
    """
    if state.key is None:
        return None  # not in the database yet: nothing to re-encrypt
    columns = mapper.column_attrs
    value = columns[key].columns[0]
    wanted = [value, *(columns[name].columns[0] for name in bound)]
    where = [column == part for column, part in zip(mapper.primary_key, state.key[1], strict=True)]
    return connection.execute(select(*wanted).where(*where)).scalar_one_or_none()


def _open(state: Any, keys: Any = None) -> None:
    """Open the SealedValues a load left in ``state`` (rare: most arrive opened)."""
    bindings = _bindings(state.mapper)
    if not bindings:
        return
    values = state.dict
    for key, bound, _ in bindings:
        sealed = values.get(key)
        if type(sealed) is not SealedValue or (keys is not None and key not in keys):
            continue
        if not all(name in values for name in bound):
            continue  # left sealed: open(obj) once its bound columns are loaded
        # As stored: committed_state holds the loaded value of a column changed since.
        row = {name: state.committed_state.get(name, values[name]) for name in bound}
        if any(isinstance(value, LoaderCallableStatus) for value in row.values()):
            continue  # changed before it was ever loaded: the flush reads it from the row
        columns = state.mapper.column_attrs
        names = {name: columns[name].columns[0].key for name in bound}
        opened = sealed.open({names[name]: row[name] for name in bound})
        set_committed_value(state.obj(), key, opened)


def _on_load(state: Any, context: Any) -> None:
    # Runs for every object any query loads (raw=True: the state, no object
    # lookup): nothing more than a cached lookup for a class without row-bound columns.
    _open(state)


def _on_refresh(state: Any, context: Any, keys: Any) -> None:
    _open(state, keys)


def install() -> None:
    """Listen on every mapper (idempotent)."""
    if not event.contains(Mapper, "before_update", _before_update):
        event.listen(Mapper, "before_update", _before_update)
    for name, listener in (("load", _on_load), ("refresh", _on_refresh)):
        if not event.contains(Mapper, name, listener):
            event.listen(Mapper, name, listener, raw=True)
