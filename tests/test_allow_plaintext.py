"""allow_plaintext reads legacy plaintext, and never a damaged envelope, on every database.

A stored value that does not decrypt is returned as plaintext only when it is not
envelope-shaped (docs/migrating.md states the rule) and decodes as the column's
logical type. These tests damage real envelopes written through EncryptedType,
one byte at a time, and check that not one comes back as data; and they read
genuine legacy plaintext of every kind the rule must let through.
"""

from __future__ import annotations

import base64
import datetime as dt
import random
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from sqla_envelope import DecryptionError, EncryptedType, Encryptor, LocalKeyring
from sqla_envelope.migrations import encrypt_column

# (id, logical type, storage): the columns a damaged envelope must never come out of
COLUMNS = [
    ("binary-LargeBinary", sa.LargeBinary, "binary"),
    ("binary-String", sa.String, "binary"),
    ("base64-String", sa.String, "base64"),
    ("base64-LargeBinary", sa.LargeBinary, "base64"),
]
VERSION_BYTE_CHANGES = 1000  # per column and database
OTHER_BYTE_CHANGES = 250


pytestmark = pytest.mark.usefixtures("encryptor")  # tests/conftest.py, with this keyring


@pytest.fixture
def keyring() -> LocalKeyring:
    return LocalKeyring.generate("k-2025-a")


def _table_of(metadata: sa.MetaData, name: str, columns: dict[str, Any]) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        *(sa.Column(column, type_) for column, type_ in columns.items()),
    )


def _table(metadata: sa.MetaData, type_: Any, name: str) -> sa.Table:
    return _table_of(metadata, name, {"v": type_})


def _raw_view(table: sa.Table, storage: str) -> sa.Table:
    """The same table seen without EncryptedType: the bytes or text as stored."""
    return _table(sa.MetaData(), sa.LargeBinary if storage == "binary" else sa.Text, table.name)


def _lenient_table(
    engine: sa.Engine, metadata: sa.MetaData, logical: Any, storage: str, name: str
) -> sa.Table:
    """A table whose column ``v`` is ``EncryptedType(logical, allow_plaintext=True)``."""
    lenient = EncryptedType(logical, storage=storage, allow_plaintext=True)  # type: ignore[arg-type]
    table = _table(metadata, lenient, name)
    metadata.create_all(engine)
    return table


def _random_value(rng: random.Random, logical: Any) -> Any:
    size = rng.choice([0, 1, 5, 11, 30, 100, 300])
    if logical is sa.LargeBinary:
        return rng.randbytes(size)
    return "".join(rng.choice("abcXYZ 0129-é日✓") for _ in range(size))


def _replace_byte(envelope: bytes, offset: int, rng: random.Random) -> bytes:
    new = rng.choice([b for b in range(256) if b != envelope[offset]])
    return envelope[:offset] + bytes((new,)) + envelope[offset + 1 :]


def _returned_as_data(engine: sa.Engine, table: sa.Table, ids: list[int]) -> list[int]:
    """The ids whose value reads as data instead of raising; each row its own SELECT."""
    returned = []
    query = sa.select(table.c.v).where(table.c.id == sa.bindparam("row"))
    with engine.connect() as conn:
        for row_id in ids:
            try:
                conn.execute(query, {"row": row_id}).scalar()
            except DecryptionError:
                continue
            returned.append(row_id)
    return returned


@pytest.mark.parametrize(
    ("logical", "storage"), [c[1:] for c in COLUMNS], ids=[c[0] for c in COLUMNS]
)
def test_damaged_envelopes_are_never_returned_as_data(
    engine: sa.Engine, metadata: sa.MetaData, logical: Any, storage: str
) -> None:
    table = _lenient_table(engine, metadata, logical, storage, f"plain_mix_{storage}")
    rng = random.Random(f"{engine.dialect.name}-{logical.__name__}-{storage}")
    values = [_random_value(rng, logical) for _ in range(VERSION_BYTE_CHANGES + OTHER_BYTE_CHANGES)]
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "v": v} for i, v in enumerate(values)])
    raw = _raw_view(table, storage)
    with engine.connect() as conn:
        stored = dict(conn.execute(sa.select(raw.c.id, raw.c.v)).all())

    # Byte 0, the version, of the first thousand rows; any other byte of the rest.
    damaged = []
    for row_id, value in stored.items():
        envelope = base64.b64decode(value) if storage == "base64" else bytes(value)
        offset = 0 if row_id < VERSION_BYTE_CHANGES else rng.randrange(1, len(envelope))
        changed = _replace_byte(envelope, offset, rng)
        damaged.append(
            {
                "id": row_id,
                "v": base64.b64encode(changed).decode() if storage == "base64" else changed,
            }
        )
    with engine.begin() as conn:
        conn.execute(raw.delete())
        conn.execute(raw.insert(), damaged)

    assert _returned_as_data(engine, table, list(stored)) == []


def test_every_one_byte_change_of_v1_and_v2_envelopes_is_envelope_shaped() -> None:
    from sqla_envelope.envelope import looks_like_envelope

    rng = random.Random(12)
    encryptor = Encryptor(LocalKeyring.generate("k-2025-a"))
    envelopes = [encryptor.encrypt(rng.randbytes(n), {"t": "x"}) for n in (0, 1, 16, 100)]
    # v2 per its layout: the v1 header under version 2, a 32-byte commitment, nonce, tag
    kms_like = bytes((2, 2)) + b"".join(
        bytes((len(ref),)) + ref + (184).to_bytes(2, "big") + rng.randbytes(184)
        for ref in (b"arn:aws:kms:eu-west-1:111122223333:key/mrk-" + b"a" * 32, b"alias/app")
    )
    envelopes += [kms_like + rng.randbytes(32 + 12 + n + 16) for n in (0, 40)]
    for envelope in envelopes:
        assert looks_like_envelope(envelope)
        for new in range(256):
            assert looks_like_envelope(bytes((new,)) + envelope[1:]), new
        for offset in range(1, len(envelope)):
            for _ in range(8):
                assert looks_like_envelope(_replace_byte(envelope, offset, rng)), offset


# -- legacy plaintext still reads -------------------------------------------------------

LEGACY_TEXT = [
    "Ada Lovelace",
    "QQ123456C",
    "078-05-1120",
    "José Núñez",
    # words made of base64 characters that decode to a version byte first (0x01: "Ab",
    # "Ad", "AQ"...; 0x02: "Al", "An"...): too short to carry a key reference
    "Alan",
    "Adam",
    "Adele",
    "Alice",
    "Anna",
    "Andrew",
    "Alexander",
    "Adelaide",
    "AQUA",
    "AQUAMARINE",
    "12345678",
    "",
    # long text whose bytes after the first happen to walk as an envelope header
    "A " + "lorem ipsum dolor sit amet " * 40_000,
]


@pytest.mark.parametrize("storage", ["binary", "base64"])
def test_legacy_text_still_reads(engine: sa.Engine, metadata: sa.MetaData, storage: str) -> None:
    table = _lenient_table(engine, metadata, sa.Text, storage, f"plain_text_{storage}")
    raw = _raw_view(table, storage)
    with engine.begin() as conn:
        conn.execute(
            raw.insert(),
            [
                {"id": i, "v": text.encode() if storage == "binary" else text}
                for i, text in enumerate(LEGACY_TEXT)
            ],
        )
    with engine.connect() as conn:
        got = dict(conn.execute(sa.select(table.c.id, table.c.v)).all())
    assert got == dict(enumerate(LEGACY_TEXT))


@pytest.mark.parametrize(
    ("logical", "legacy", "value"),
    [
        (sa.JSON, '{"a": [1, 2.5, null], "b": "ü"}', {"a": [1, 2.5, None], "b": "ü"}),
        (sa.JSON, "[1,2]", [1, 2]),
        (sa.Numeric(10, 2), "12.50", Decimal("12.50")),
        (sa.Date, "2020-01-31", dt.date(2020, 1, 31)),
        (sa.Enum("small", "large", name="size"), "large", "large"),
    ],
    ids=["json-object", "json-list", "numeric", "date", "enum"],
)
@pytest.mark.parametrize("storage", ["binary", "base64"])
def test_legacy_values_of_every_type_still_read(
    engine: sa.Engine, metadata: sa.MetaData, logical: Any, legacy: str, value: Any, storage: str
) -> None:
    table = _lenient_table(engine, metadata, logical, storage, f"plain_typed_{storage}")
    stored = legacy.encode() if storage == "binary" else legacy
    with engine.begin() as conn:
        conn.execute(_raw_view(table, storage).insert().values(id=1, v=stored))
    with engine.connect() as conn:
        assert conn.execute(sa.select(table.c.v)).scalar() == value


LEGACY_BINARY = [
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
    b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj" + bytes(200),
    b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(range(255, 0, -1)),
    b"\x00" * 64,
    b"\x01",  # shorter than any key reference: data
    b"\x02\x00\x00",
]


def test_legacy_binary_still_reads(engine: sa.Engine, metadata: sa.MetaData) -> None:
    table = _lenient_table(engine, metadata, sa.LargeBinary, "binary", "plain_binary")
    # and a thousand random values that do not start with a version byte
    rng = random.Random(8)
    values = LEGACY_BINARY + [
        bytes((rng.randrange(3, 256),)) + rng.randbytes(rng.randrange(0, 400)) for _ in range(1000)
    ]
    with engine.begin() as conn:
        conn.execute(
            _raw_view(table, "binary").insert(), [{"id": i, "v": v} for i, v in enumerate(values)]
        )
    with engine.connect() as conn:
        got = dict(conn.execute(sa.select(table.c.id, table.c.v)).all())
    assert got == dict(enumerate(values))


def test_legacy_values_of_the_old_sql_type_still_read(
    engine: sa.Engine, metadata: sa.MetaData
) -> None:
    # The column still has its SQL type from before (an INTEGER, a DATE): the
    # driver returns a number or a date, not bytes.
    row = {"n": 10**12, "amount": Decimal("12.50"), "born": dt.date(1815, 12, 10), "ok": True}
    old_types = {"n": sa.BigInteger, "amount": sa.Numeric(10, 2), "born": sa.Date, "ok": sa.Boolean}
    legacy = _table_of(metadata, "plain_native", old_types)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(legacy.insert().values(id=1, **row))
    view = _table_of(
        sa.MetaData(),
        "plain_native",
        {name: EncryptedType(type_, allow_plaintext=True) for name, type_ in old_types.items()},
    )
    with engine.connect() as conn:
        got = conn.execute(sa.select(view.c.n, view.c.amount, view.c.born, view.c.ok)).one()
    assert got._asdict() == row


@pytest.mark.parametrize("storage", ["binary", "base64"])
def test_a_remnant_too_short_for_its_key_reference_is_data_and_a_longer_one_is_refused(
    engine: sa.Engine, metadata: sa.MetaData, storage: str
) -> None:
    # What a column narrower than any envelope keeps of one. Until the first key
    # reference is whole (3 + 8 bytes here), the bytes are those of many a word.
    table = _lenient_table(engine, metadata, sa.String, storage, f"plain_cut_{storage}")
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=0, v="a secret"))
    raw = _raw_view(table, storage)
    with engine.connect() as conn:
        stored = conn.execute(sa.select(raw.c.v)).scalar()
    keeps = [10, 11] if storage == "binary" else [12, 16]
    with engine.begin() as conn:
        conn.execute(
            raw.insert(), [{"id": i, "v": stored[:keep]} for i, keep in enumerate(keeps, 1)]
        )
    assert _returned_as_data(engine, table, [0, 1, 2]) == [0, 1]  # 0 decrypts, 1 is data


# -- envelope-shaped legacy values are refused, and how to migrate them ------------------

ENVELOPE_SHAPED = [
    b"\x01" + bytes(range(40)),  # a version byte, and as long as an envelope
    b"\x02legacy bytes that start with 0x02 and go on for a while",
    b"\x01\x01\x03abc",  # the start of an envelope: a key count, a whole key reference
    b"\x02\x01\x03abc\x00\x30" + b"\xcc" * 20,
    b"\x7f\x01\x03abc\x00\x05" + b"\xaa" * 5 + b"\xbb" * 28,  # a header after byte 0
]


@pytest.mark.parametrize("storage", ["binary", "base64"])
def test_envelope_shaped_legacy_binary_is_refused(
    engine: sa.Engine, metadata: sa.MetaData, storage: str
) -> None:
    table = _lenient_table(engine, metadata, sa.LargeBinary, storage, f"plain_shaped_{storage}")
    rows = [
        {"id": i, "v": v if storage == "binary" else base64.b64encode(v).decode()}
        for i, v in enumerate(ENVELOPE_SHAPED)
    ]
    with engine.begin() as conn:
        conn.execute(_raw_view(table, storage).insert(), rows)
    ids = [row["id"] for row in rows]
    assert _returned_as_data(engine, table, ids) == []
    # encrypt_column in place reports them rather than guess, and leaves them alone
    report = encrypt_column(engine, table.c.v, strict=False)
    assert (report.changed, sorted(key for (key,), _ in report.failures)) == (0, ids)


def test_envelope_shaped_legacy_binary_migrates_through_a_source_column(
    engine: sa.Engine, metadata: sa.MetaData
) -> None:
    columns = {"legacy": sa.LargeBinary, "v": EncryptedType(sa.LargeBinary)}
    table = _table_of(metadata, "plain_source", columns)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            table.insert(), [{"id": i, "legacy": v} for i, v in enumerate(ENVELOPE_SHAPED)]
        )
    report = encrypt_column(engine, table.c.v, source=table.c.legacy)
    assert (report.changed, report.failures) == (len(ENVELOPE_SHAPED), [])
    with engine.connect() as conn:
        assert (
            conn.execute(sa.select(table.c.v).order_by(table.c.id)).scalars().all()
            == ENVELOPE_SHAPED
        )
