"""Property-based round trips: every logical type, arbitrary values, value in == value out."""

from __future__ import annotations

import datetime as dt
import enum
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sqla_envelope import EncryptedType, Encryptor, LocalKeyring


class Tier(enum.Enum):
    FREE = 1
    PRO = 2
    ENTERPRISE = 3


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
aware_datetimes = st.datetimes(
    timezones=st.sampled_from(
        [
            dt.timezone.utc,
            dt.timezone(dt.timedelta(hours=-7)),
            dt.timezone(dt.timedelta(hours=5, minutes=45)),
        ]
    )
)

# logical type -> strategy of its Python values
STRATEGIES: list[tuple[str, Any, st.SearchStrategy[Any]]] = [
    ("String", sa.String(), st.text()),
    ("Text", sa.Text(), st.text(max_size=5000)),
    ("LargeBinary", sa.LargeBinary(), st.binary(max_size=5000)),
    ("Integer", sa.Integer(), st.integers(-(2**31), 2**31 - 1)),
    ("BigInteger", sa.BigInteger(), st.integers(-(2**63), 2**63 - 1)),
    ("Numeric", sa.Numeric(), st.decimals(allow_nan=False, allow_infinity=False)),
    ("Float", sa.Float(), st.floats(allow_nan=False)),
    ("Boolean", sa.Boolean(), st.booleans()),
    ("Date", sa.Date(), st.dates()),
    ("DateTime", sa.DateTime(), st.datetimes()),
    ("DateTimeTZ", sa.DateTime(timezone=True), aware_datetimes),
    ("Time", sa.Time(), st.times()),
    ("Interval", sa.Interval(), st.timedeltas()),
    ("Uuid", sa.Uuid(), st.uuids()),
    ("Enum", sa.Enum(Tier), st.sampled_from(Tier)),
    ("JSON", sa.JSON(), json_values),
]

ENCRYPTOR = Encryptor(LocalKeyring.generate())
DIALECT = sa.create_engine("sqlite://").dialect


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, Decimal):
        return isinstance(b, Decimal) and a.as_tuple() == b.as_tuple()
    if isinstance(a, dt.datetime) and a.tzinfo is not None:
        return a == b and a.utcoffset() == b.utcoffset()
    return type(a) is type(b) and a == b


@pytest.mark.parametrize(
    ("logical", "values"), [(t, s) for _, t, s in STRATEGIES], ids=[n for n, _, _ in STRATEGIES]
)
def test_any_value_round_trips_through_the_column_type(
    logical: Any, values: st.SearchStrategy[Any]
) -> None:
    column_type = EncryptedType(logical, ENCRYPTOR, context={"table": "t", "column": "c"})
    bind = column_type.bind_processor(DIALECT)
    result = column_type.result_processor(DIALECT, None)

    @settings(max_examples=150, deadline=None)
    @given(values)
    def check(value: Any) -> None:
        stored = bind(value)
        if value is None:  # a top-level JSON null is SQL NULL, as for every type
            assert stored is None
            return
        assert isinstance(stored, bytes)
        assert _same(result(stored), value)

    check()


@given(st.text(), st.binary())
@settings(max_examples=200, deadline=None)
def test_encryptor_round_trips_any_bytes_under_any_context(label: str, data: bytes) -> None:
    context = {"table": label, "column": label[::-1]}
    assert ENCRYPTOR.decrypt(ENCRYPTOR.encrypt(data, context), context) == data


@given(st.binary(max_size=64), st.integers(0, 10_000))
@settings(max_examples=300, deadline=None)
def test_any_single_bit_flip_is_detected(data: bytes, position: int) -> None:
    from sqla_envelope import DecryptionError

    context = {"table": "t", "column": "c"}
    envelope = bytearray(ENCRYPTOR.encrypt(data, context))
    position %= len(envelope) * 8
    envelope[position // 8] ^= 1 << (position % 8)
    ENCRYPTOR.clear_cache()
    with pytest.raises(DecryptionError):
        ENCRYPTOR.decrypt(bytes(envelope), context)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.text(), document=json_values, number=st.integers(-(2**63), 2**63 - 1), ident=st.uuids()
)
def test_values_round_trip_through_each_database(
    engine: sa.Engine, text: str, document: Any, number: int, ident: uuid.UUID
) -> None:
    md = sa.MetaData()
    table = sa.Table(
        "property_rows",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("text", EncryptedType(sa.Text, ENCRYPTOR)),
        sa.Column("document", EncryptedType(sa.JSON, ENCRYPTOR)),
        sa.Column("number", EncryptedType(sa.BigInteger, ENCRYPTOR)),
        sa.Column("ident", EncryptedType(sa.Uuid, ENCRYPTOR)),
    )
    md.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(
                table.insert().values(
                    id=1, text=text, document=document, number=number, ident=ident
                )
            )
        with engine.connect() as conn:
            row = conn.execute(
                sa.select(table.c.text, table.c.document, table.c.number, table.c.ident)
            ).one()
        assert tuple(row) == (text, document, number, ident)
    finally:
        md.drop_all(engine)


# -- what is accepted reads back: every logical type, through every database ------------

# Values a column may be handed, beyond the well-behaved ones above: NaNs (quiet and
# signaling), infinities, Decimals past float's range, floats in Numeric columns.
WILD: list[tuple[str, Any, st.SearchStrategy[Any]]] = [
    ("Numeric", sa.Numeric(), st.decimals() | st.floats()),
    ("Numeric-float", sa.Numeric(asdecimal=False), st.decimals() | st.floats()),
    ("Float", sa.Float(), st.floats() | st.decimals()),
    ("Float-decimal", sa.Float(asdecimal=True), st.floats() | st.decimals()),
    ("JSON", sa.JSON(), json_values | st.floats()),
]


def _read_back(written: Any, read: Any, logical: Any) -> bool:
    """Whether ``read`` is what a plaintext column of ``logical`` gives back for ``written``."""
    if isinstance(logical, sa.JSON):
        return _same(written, read) or written == read
    if isinstance(logical, sa.Float) or not logical.asdecimal:  # a column of floats
        expected = float(written)
        got = float(read)  # Float(asdecimal=True) gives the float as a Decimal
        return math.isnan(got) if math.isnan(expected) else got == expected
    expected_decimal = Decimal(str(written)) if isinstance(written, float) else written
    if expected_decimal.is_nan():
        return isinstance(read, Decimal) and read.is_nan()
    return _same(expected_decimal, read)


@pytest.mark.parametrize(
    ("logical", "values"), [(t, s) for _, t, s in WILD], ids=[n for n, _, _ in WILD]
)
def test_a_value_either_is_refused_when_written_or_reads_back(
    logical: Any, values: st.SearchStrategy[Any]
) -> None:
    # Issue 12, finding 4: Decimal("sNaN") was accepted by Numeric(asdecimal=False)
    # and every later read of the row raised a bare ValueError.
    from sqla_envelope import InvalidValueError

    column_type = EncryptedType(logical, ENCRYPTOR, context={"table": "t", "column": "c"})
    bind = column_type.bind_processor(DIALECT)
    result = column_type.result_processor(DIALECT, None)

    @settings(max_examples=400, deadline=None)
    @given(values)
    def check(value: Any) -> None:
        try:
            stored = bind(value)
        except InvalidValueError:
            return  # refused, and nothing to store
        if stored is None:
            return
        assert _read_back(value, result(stored), logical)

    check()


@pytest.mark.parametrize(
    "logical", [t for _, t, _ in STRATEGIES], ids=[n for n, _, _ in STRATEGIES]
)
def test_every_logical_type_round_trips_through_each_database(
    engine: sa.Engine, logical: Any
) -> None:
    md = sa.MetaData()
    table = sa.Table(
        "property_types",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("v", EncryptedType(logical, ENCRYPTOR)),
    )
    md.create_all(engine)
    strategy = dict((id(t), s) for _, t, s in STRATEGIES)[id(logical)]
    try:

        @settings(
            max_examples=8,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(st.lists(strategy, min_size=1, max_size=6))
        def check(values: list[Any]) -> None:
            rows = [{"id": i, "v": v} for i, v in enumerate(values)]
            with engine.begin() as conn:
                conn.execute(table.delete())
                conn.execute(table.insert(), rows)
            with engine.connect() as conn:
                read = dict(conn.execute(sa.select(table.c.id, table.c.v)).all())
            for row in rows:
                if row["v"] is None:  # a top-level JSON null is SQL NULL
                    assert read[row["id"]] is None
                else:
                    assert _same(read[row["id"]], row["v"]), (row["v"], read[row["id"]])

        check()
    finally:
        md.drop_all(engine)


def test_a_stored_signaling_nan_raises_decryption_error_and_verify_goes_on(
    engine: sa.Engine,
) -> None:
    # What e16c428 let in: an envelope whose plaintext is "sNaN" in a
    # Numeric(asdecimal=False) column. Reading it must fail as a DecryptionError,
    # and verify must report the row and examine the others.
    import sqla_envelope
    from sqla_envelope import DecryptionError, InvalidValueError
    from sqla_envelope.maintenance import verify

    md = sa.MetaData()
    table = sa.Table(
        "property_snan",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("amount", EncryptedType(sa.Numeric(asdecimal=False))),
    )
    md.create_all(engine)
    sqla_envelope.configure(ENCRYPTOR)
    try:
        with pytest.raises(InvalidValueError, match="signaling NaN"), engine.begin() as conn:
            conn.execute(table.insert().values(id=1, amount=Decimal("sNaN")))
        context = table.c.amount.type.encryption_context()
        raw = sa.table("property_snan", sa.column("id"), sa.column("amount", sa.LargeBinary))
        with engine.begin() as conn:
            conn.execute(table.insert(), [{"id": 1, "amount": 1.5}, {"id": 3, "amount": 2.5}])
            conn.execute(raw.insert().values(id=2, amount=ENCRYPTOR.encrypt(b"sNaN", context)))
        with engine.connect() as conn, pytest.raises(DecryptionError, match="decimal"):
            conn.execute(sa.select(table.c.amount).where(table.c.id == 2)).scalar_one()
        report = verify(engine, table.c.amount)
        assert report.examined == 3
        assert [key for key, _ in report.failures] == [(2,)]
    finally:
        md.drop_all(engine)
