"""When a statement is compiled, refuses SQL that compares or transforms an encrypted value.

The comparator refuses ``Model.ssn == "x"`` while it is built, but many expressions never
go through it: ``literal("x") == col``, ``cast(col, String) == "x"``, ``lower(col)``,
``tuple_(id, col).in_(...)``, ``ORDER BY col``. This walk sees them all: it runs inside
SQLAlchemy's compilation of each statement, for every dialect, so it raises before
anything is executed or logged, and compiled statements are cached, so it costs nothing
per execution. The rules and messages are in comparisons.py.

Allowed: selecting an encrypted value (labels, subqueries, CTEs, ``RETURNING``, CASE
results, ``EXISTS``), ``IS [NOT] NULL``, ``count(col)``, the values of INSERT and
UPDATE, ``type_coerce(col, LargeBinary)`` (the stored envelope, on purpose), an encrypted
type declared on ``text().columns()``. Raw SQL text is not analysed. A value that an
INSERT or UPDATE would store unencrypted (``values(ssn=func.upper("x"))``) is refused.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sqlalchemy.sql import dml, elements, functions, operators, selectable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.sqltypes import NullType

from .comparisons import (
    NO_COMPUTE,
    NO_GROUPS,
    NO_MATCH,
    NO_ORDER,
    describe,
    is_encrypted,
    operator_name,
    refusal,
    why,
)
from .errors import UnsupportedComparisonError

__all__ = ["check_statement", "install"]

_NULL_TESTS = frozenset(
    {operators.is_, operators.is_not, operators.is_distinct_from, operators.is_not_distinct_from}
)
_ORDERING_FUNCTIONS = frozenset({"max", "min", "greatest", "least"})


def check_statement(statement: Any) -> None:
    """Raises UnsupportedComparisonError if SQL anywhere in ``statement`` uses an encrypted value.

    Walks the whole statement: its subqueries, CTEs, joins and scalar subqueries too.
    """
    _Walk().flows(statement)


class _Walk:
    """One pass over a statement: which elements yield an encrypted value, and who uses it.

    ``flows(element)`` returns the description of the encrypted value ``element`` hands
    to its parent (a column, a label of one, a scalar subquery selecting one), or None.
    Each construct then judges the encrypted values its operands hand it.
    """

    def __init__(self) -> None:
        # id -> (element, result); holding the element keeps its id its own.
        self._seen: dict[int, tuple[Any, str | None]] = {}

    def flows(self, element: Any) -> str | None:
        known = self._seen.get(id(element))
        if known is not None:
            return known[1]
        result = self._visit(element)
        self._seen[id(element)] = (element, result)
        return result

    def _visit(self, element: Any) -> str | None:
        if isinstance(element, selectable.TableClause):
            return None  # its columns are not operands of anything here
        if isinstance(element, elements.ColumnClause):
            return _own(element)
        if isinstance(element, _STATEMENTS):  # yields no value of its own
            self._statement(element)
            return None
        if isinstance(element, elements.BinaryExpression):
            return self._binary(element)
        if isinstance(element, functions.FunctionElement):
            return self._function(element)
        if isinstance(element, elements.Case):
            return self._case(element)
        encrypted = self._any(_children(element))
        if _is_transparent(element):
            return encrypted or _own(element)
        if encrypted and not isinstance(element, _ACCEPTING):
            what, reason = _construct(element)  # CAST, a tuple, DESC, OVER, ...
            raise refusal(what, encrypted, reason)
        return _own(element)

    def _any(self, children: Iterable[Any]) -> str | None:
        """Visits every child (each is checked), and returns the first encrypted one."""
        found = [self.flows(child) for child in children]
        return next((f for f in found if f), None)

    def _refuse_in(self, clauses: Iterable[Any], what: str, reason: str) -> None:
        for clause in clauses:
            found = self.flows(clause)
            if found:
                raise refusal(what, found, reason)

    def _statement(self, stmt: Any) -> None:
        if isinstance(stmt, selectable.Select):
            self._select(stmt)
        elif isinstance(stmt, selectable.CompoundSelect):
            self._ordered(stmt, ())
        else:
            self._dml(stmt)

    def _select(self, stmt: Any) -> None:
        self._any(stmt._raw_columns)  # selecting an encrypted value is what it is for
        distinct_on = getattr(stmt, "_distinct_on", ())
        self._refuse_in(stmt._where_criteria, "WHERE", NO_MATCH)
        self._refuse_in(stmt._having_criteria, "HAVING", NO_MATCH)
        self._refuse_in(distinct_on, "DISTINCT ON", NO_GROUPS)
        parts = (stmt._raw_columns, stmt._where_criteria, stmt._having_criteria, distinct_on)
        self._ordered(stmt, itertools.chain(*parts))

    def _ordered(self, stmt: Any, handled: Iterable[Any]) -> None:
        """ORDER BY, GROUP BY, then every other part of a SELECT or a compound SELECT."""
        for clauses, what, reason in (
            (stmt._order_by_clauses, "ORDER BY", NO_ORDER),
            (stmt._group_by_clauses, "GROUP BY", NO_GROUPS),
        ):
            for clause in clauses:
                found = self.flows(clause) or _named_column(clause, stmt)
                if found:
                    raise refusal(what, found, reason)
        done = {id(c) for c in (*handled, *stmt._order_by_clauses, *stmt._group_by_clauses)}
        self._refuse_in((c for c in _children(stmt) if id(c) not in done), "this clause", NO_MATCH)

    def _dml(self, stmt: Any) -> None:
        where = getattr(stmt, "_where_criteria", ())
        self._refuse_in(where, "WHERE", NO_MATCH)
        done = {id(c) for c in where}
        # The table, the values, RETURNING, INSERT ... SELECT: each checked inside.
        self._any(c for c in _children(stmt) if id(c) not in done)
        for column, value in _assignments(stmt):
            if is_encrypted(column) and not _stays_encrypted(value):
                raise UnsupportedComparisonError(
                    "cannot store a SQL expression of another type in an encrypted column "
                    f"({describe(column)}): the database would store its result as it is, "
                    "unencrypted; pass the value from Python, where it is encrypted"
                )

    def _binary(self, binary: Any) -> str | None:
        left, right = self.flows(binary.left), self.flows(binary.right)
        found = left or right
        if found is None:
            return _own(binary)
        other = binary.right if left else binary.left
        if binary.operator in _NULL_TESTS and not (left and right) and _is_null(other):
            return None  # IS [NOT] NULL: NULL is stored as NULL
        raise refusal(operator_name(binary.operator), found, why(binary.operator))

    def _function(self, function: Any) -> str | None:
        encrypted = self._any(_children(function))
        name = str(getattr(function, "name", "")).lower()
        if encrypted and name != "count":  # count(col) counts the non-NULL values
            reason = NO_ORDER if name in _ORDERING_FUNCTIONS else NO_COMPUTE
            raise refusal(f"{name or 'a function'}()", encrypted, reason)
        return _own(function)

    def _case(self, case: Any) -> str | None:
        tested = [case.value, *(condition for condition, _ in case.whens)]
        self._refuse_in((c for c in tested if c is not None), "CASE", NO_MATCH)
        self._any(c for c in (*(result for _, result in case.whens), case.else_) if c is not None)
        return _own(case)  # a result is selected as it is


# Constructs that hand their operands on unchanged, for their parent to judge: (col),
# col AS x, a label named in ORDER BY; lists (in _is_transparent).
_TRANSPARENT = (elements.Grouping, elements.Label, elements._label_reference)
# Constructs where an encrypted operand is fine: the stored envelope on purpose, FOR
# UPDATE OF, rows of a VALUES list, the columns of a textual SELECT, an ORM's memory of
# former columns, EXISTS (only whether a row is there), raw SQL text (not analysed).
_ACCEPTING = (
    elements.TypeCoerce,
    selectable.ForUpdateArg,
    selectable.Values,
    selectable.TextualSelect,
    selectable._MemoizedSelectEntities,
    selectable.Exists,
    elements.TextClause,
)


def _own(element: Any) -> str | None:
    return describe(element) if is_encrypted(element) else None


def _children(element: Any) -> Iterable[Any]:
    get_children = getattr(element, "get_children", None)
    return get_children() if get_children is not None else ()


def _is_transparent(element: Any) -> bool:
    if isinstance(element, _TRANSPARENT):
        return True
    if isinstance(element, (elements.Tuple, elements.BooleanClauseList)):
        return False  # (id, ssn) IN ..., a bare column among AND/OR conditions
    if isinstance(element, elements.ExpressionClauseList):
        return True  # the bounds of BETWEEN, judged by the BETWEEN
    return isinstance(element, elements.ClauseList) and element.operator is operators.comma_op


def _is_null(element: Any) -> bool:
    while isinstance(element, elements.Grouping):
        element = element.element
    return isinstance(element, elements.Null)


def _named_column(clause: Any, stmt: Any) -> str | None:
    """``order_by("ssn")``: the encrypted column a label name refers to, if any."""
    while isinstance(clause, elements.UnaryExpression) and clause.modifier is not None:
        clause = clause.element  # DESC, NULLS LAST
    if not isinstance(clause, elements._textual_label_reference):
        return None
    column = stmt.selected_columns.get(clause.element)
    return describe(column) if column is not None and is_encrypted(column) else None


def _construct(element: Any) -> tuple[str, str]:
    """What to call a construct over an encrypted value, and why it is refused."""
    if isinstance(element, elements.UnaryExpression):
        op = element.modifier or element.operator
        return operator_name(op), why(op)
    if isinstance(element, elements.Tuple):
        return "a tuple", NO_MATCH
    if isinstance(element, elements.Cast):
        return "CAST", NO_COMPUTE
    if isinstance(element, (elements.Over, elements.WithinGroup)):
        return "a window or ordered aggregate", NO_ORDER
    return type(element).__name__, NO_COMPUTE


def _assignments(stmt: Any) -> Iterator[tuple[Any, Any]]:
    """(column, value) for every value an INSERT or UPDATE sets, as the statement holds it."""
    table = getattr(stmt, "table", None)
    if not isinstance(table, selectable.TableClause):
        return
    pairs: list[Iterable[tuple[Any, Any]]] = []
    for values in (getattr(stmt, "_values", None), getattr(stmt, "_ordered_values", None)):
        if values:  # _ordered_values: SQLAlchemy 2.0's update().ordered_values()
            pairs.append(values.items() if isinstance(values, Mapping) else values)
    for rows in getattr(stmt, "_multi_values", ()):
        # A positional row may leave the last columns out (strict=False).
        pairs.extend(
            r.items() if isinstance(r, Mapping) else zip(table.c, r, strict=False) for r in rows
        )
    for key, value in itertools.chain.from_iterable(pairs):
        yield (table.c.get(key) if isinstance(key, str) else key), value


def _stays_encrypted(value: Any) -> bool:
    """Whether a value set on an encrypted column reaches the database encrypted."""
    if not isinstance(value, elements.ClauseElement):
        return True  # a Python value: bound with the column's type
    if isinstance(value, elements.BindParameter) and isinstance(value.type, NullType):
        return True  # an untyped parameter: SQLAlchemy gives it the column's type
    # NULL, a copy of a stored envelope, or one passed on purpose with type_coerce().
    return isinstance(value, (elements.Null, elements.TypeCoerce)) or is_encrypted(value)


# -- the hook --------------------------------------------------------------------------------

_STATEMENTS: tuple[type[Any], ...] = (
    selectable.Select,
    selectable.CompoundSelect,
    dml.Insert,
    dml.Update,
    dml.Delete,
)
_GUARDED: set[type[Any]] = set()


def install() -> None:
    """Makes SQLAlchemy run check_statement whenever it compiles a statement; idempotent.

    Wraps the compile dispatch of SELECT, compound SELECT, INSERT, UPDATE and DELETE,
    whatever it is, so ``sqlalchemy.ext.compiler`` recipes registered before keep
    working. A statement compiled at the top level is checked whole, before it is
    compiled; with the ORM, the statement the ORM derives from it (loader criteria,
    eager joins) is checked after.
    """
    for cls in _STATEMENTS:
        if cls in _GUARDED:
            continue
        guarded = _guarded_dispatch(cls._compiler_dispatch)
        cls._compiler_dispatch = guarded
        cls._original_compiler_dispatch = guarded  # what sqlalchemy.ext.compiler restores
        _GUARDED.add(cls)


def _guarded_dispatch(inner: Any) -> Any:
    def _compiler_dispatch(self: Any, visitor: Any, **kw: Any) -> Any:
        top = isinstance(visitor, SQLCompiler) and not visitor.stack
        if top:
            check_statement(self)
        text = inner(self, visitor, **kw)
        if top:
            derived = getattr(visitor.compile_state, "statement", None)
            if derived is not None and derived is not self:
                check_statement(derived)
        return text

    return _compiler_dispatch
