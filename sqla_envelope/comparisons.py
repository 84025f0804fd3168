"""What SQL may do with an encrypted value, and why the rest is refused: the rules of both checks.

Every value is sealed under its own random data key and nonce, so the database only ever
holds random bytes: ``WHERE ssn = 'x'`` matches nothing, ``lower(ssn)``, ``length(ssn)``,
``max(ssn)`` or ``ORDER BY ssn`` compute on ciphertext, and a search term bound in such
an expression goes to the SQL log in plaintext. Two checks refuse them with
UnsupportedComparisonError, with a message that says why:

- while an expression is built, the encrypted type's comparator (here) refuses an
  operator applied to the column with a Python value: ``Model.ssn == "x"``,
  ``Model.ssn.like(...)``, ``Model.ssn.desc()``; the earliest error;
- when a statement is compiled, sql_guard walks the whole statement and refuses every
  other use, whatever the left side: ``literal("x") == col``, ``cast(col, ...)``,
  functions, tuples, ``ORDER BY``, ``GROUP BY``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_ as sa_and
from sqlalchemy import not_ as sa_not
from sqlalchemy import or_ as sa_or
from sqlalchemy.sql import compiler, elements, operators, selectable
from sqlalchemy.sql.type_api import TypeDecorator

from .errors import UnsupportedComparisonError

__all__ = [
    "NO_COMPUTE",
    "NO_GROUPS",
    "NO_MATCH",
    "NO_ORDER",
    "GuardedComparator",
    "blind_indexes_for",
    "check_operator",
    "describe",
    "is_encrypted",
    "operator_name",
    "refusal",
    "through_indexes",
    "why",
]

# Why each kind of refused SQL is meaningless. None of it, nor any message built
# here, names a value: only operators, functions, tables and columns.
NO_MATCH = (
    "every value has its own random data key and nonce, so the database compares random "
    "ciphertext and would silently match nothing; compare after loading the rows, or, "
    "for == and IN, declare a blind index of the column (a BlindIndex column on the same "
    "table: docs/searching.md)"
)
NO_ORDER = (
    "the stored ciphertext is random, so an order over it is random too; sort after "
    "loading the rows, or order by another column"
)
NO_GROUPS = (
    "every value has its own random data key, so every stored ciphertext is different, "
    "even for equal values, and grouping or DISTINCT over it treats every row as unique; "
    "group after loading the rows, or by the column's blind index (docs/searching.md)"
)
NO_COMPUTE = (
    "the database holds only random ciphertext, so it would compute on the envelope, not "
    "on the value, and the result is meaningless; compute after loading the rows"
)


def operator_name(op: Any) -> str:
    """An operator as SQL spells it (``=``, ``LIKE``, ``DESC``), for messages."""
    sql = compiler.OPERATORS.get(op)
    if sql is not None:
        return sql.strip()
    opstring = getattr(op, "opstring", None)  # Operators.op("...")
    if opstring is not None:
        return str(opstring)
    name = str(getattr(op, "__name__", op))
    return name.removesuffix("_op").replace("_", " ").upper()  # between_op -> BETWEEN


def why(op: Any) -> str:
    """Why an operator over an encrypted value is refused."""
    if operators.is_ordering_modifier(op):
        return NO_ORDER
    if op is operators.distinct_op:
        return NO_GROUPS
    if operators.is_comparison(op) or op in (operators.any_op, operators.all_op):
        return NO_MATCH
    return NO_COMPUTE


def refusal(what: str, column: str, reason: str) -> UnsupportedComparisonError:
    return UnsupportedComparisonError(
        f"cannot use {what} on an encrypted column ({column}): {reason}"
    )


def describe(element: Any) -> str:
    """Names an encrypted operand by its table and column, never by a value."""
    table = getattr(element, "table", None)
    name = getattr(element, "name", None) or getattr(element, "key", None)
    if isinstance(name, str) and isinstance(table, selectable.TableClause):
        return f"{table.name}.{name}"
    if isinstance(element, elements.BindParameter) or not isinstance(name, str):
        return "a value of an encrypted type"
    return name


def is_encrypted(element: Any) -> bool:
    """Whether a SQL expression's type is encrypted: its comparator is GuardedComparator."""
    # The class attribute, not the instance's: a plain TypeDecorator builds a new
    # comparator class each time its comparator_factory is read.
    factory = getattr(type(getattr(element, "type", None)), "comparator_factory", None)
    return isinstance(factory, type) and issubclass(factory, GuardedComparator)


_INDEXED_OPERATORS = (operators.eq, operators.ne, operators.in_op, operators.not_in_op)


def blind_indexes_for(expr: Any, op: Any, other: tuple[Any, ...]) -> list[Any]:
    """The blind index columns that answer ``op`` on the encrypted ``expr``; [] for none.

    Only equality and membership against Python values, and only where the
    column's table (or the alias it is read through) has single-column blind
    indexes of it: column types whose ``indexes_source`` names it (search/).
    """
    if op not in _INDEXED_OPERATORS or len(other) != 1:
        return []
    value = other[0]
    if value is None or isinstance(value, elements.ClauseElement):
        return []
    if hasattr(value, "__clause_element__"):
        return []
    table = getattr(expr, "table", None)
    name = getattr(expr, "key", None)
    columns = getattr(table, "c", None)
    if columns is None or name is None:
        return []
    return [c for c in columns if getattr(c.type, "indexes_source", None) == name]


def through_indexes(indexes: list[Any], op: Any, other: tuple[Any, ...], column: str) -> Any:
    """``op`` on an encrypted column, asked of its blind index, or of both while one rotates.

    A new index declared with ``replaces=`` the old one is being filled by
    ``reindex``: a row matches if either index says so (the old one is kept in
    step on every write until it is dropped), so no lookup misses a row. For
    ``!=`` and ``NOT IN``, a row the new index has not reached yet (NULL there)
    is judged by the old one alone.
    """
    if len(indexes) == 1:
        return indexes[0].operate(op, *other)
    keys = {index.key for index in indexes}
    replaced = {getattr(index.type, "replaces", None) for index in indexes} & keys
    if len(indexes) != 2 or len(replaced) != 1:
        names = ", ".join(sorted(keys))
        raise UnsupportedComparisonError(
            f"{column} has several blind indexes ({names}): compare the index column you "
            f"mean, or declare the new one with replaces= the old while it is filled"
        )
    positive = operators.eq if op in (operators.eq, operators.ne) else operators.in_op
    matches = [
        index.operate(positive, *other)
        if index.key in replaced
        else sa_and(index.is_not(None), index.operate(positive, *other))
        for index in indexes
    ]
    either = sa_or(*matches)
    return either if op is positive else sa_not(either)


def check_operator(op: Any, other: tuple[Any, ...], column: str) -> None:
    """Refuses an operator applied to an encrypted column, while the expression is built.

    ``IS [NOT] NULL`` passes (``== None`` becomes one). ``==`` and ``!=`` with another SQL
    expression pass here and are judged when the statement is compiled: SQLAlchemy
    itself compares columns with ``==`` in Python (the dictionary lookups of an ORM bulk
    UPDATE or DELETE), where the result must stay a harmless expression.
    """
    if op in (operators.is_, operators.is_not):
        return
    if op in (operators.eq, operators.ne) and len(other) == 1:
        value = other[0]
        if value is None or isinstance(value, elements.ClauseElement):
            return
        if hasattr(value, "__clause_element__"):  # an ORM attribute
            return
    raise refusal(operator_name(op), column, why(op))


class GuardedComparator(TypeDecorator.Comparator[Any]):
    """The comparator of encrypted types: refuses operators that cannot work on ciphertext.

    sql_guard treats every expression whose type uses this comparator (or a subclass)
    as an encrypted value.
    """

    def operate(self, op: Any, *other: Any, **kwargs: Any) -> Any:
        indexes = blind_indexes_for(self.expr, op, other)
        if indexes:
            return through_indexes(indexes, op, other, describe(self.expr))
        check_operator(op, other, describe(self.expr))
        return super().operate(op, *other, **kwargs)

    def reverse_operate(self, op: Any, other: Any, **kwargs: Any) -> Any:
        check_operator(op, (other,), describe(self.expr))
        return super().reverse_operate(op, other, **kwargs)
