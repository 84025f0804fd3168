"""encrypt_column, decrypt_column and allow_plaintext on every database."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import sqla_envelope
from sqla_envelope import (
    ConfigurationError,
    DecryptionError,
    EncryptedType,
    Encryptor,
    LocalKeyring,
    MalformedEnvelopeError,
    unpack_envelope,
)
from sqla_envelope.migrations import decrypt_column, encrypt_column

NAMES = [f"person-{i}" for i in range(23)]


@pytest.fixture(autouse=True)
def keys() -> LocalKeyring:
    keyring = LocalKeyring.generate("k1")
    sqla_envelope.configure(Encryptor(keyring))
    return keyring


@pytest.fixture
def plain_table(engine: sa.Engine) -> Iterator[str]:
    """A table whose `secret` TEXT column holds plaintext, as before adopting the library."""
    md = sa.MetaData()
    table = sa.Table(
        "mig_people",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("secret", sa.Text),
        sa.Column("born", sa.Date),
        sa.Column(
            "born_enc", sa.LargeBinary().with_variant(sa.dialects.mysql.LONGBLOB(), "mariadb")
        ),
    )
    md.drop_all(engine)
    md.create_all(engine)
    rows = [
        {"id": i, "secret": name, "born": dt.date(1990, 1, 1) + dt.timedelta(days=i)}
        for i, name in enumerate(NAMES)
    ]
    rows.append({"id": len(NAMES), "secret": None, "born": None})
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
    yield table.name
    md.drop_all(engine)


def _encrypted_view(name: str, *, allow_plaintext: bool = False) -> sa.Table:
    """The application's declaration once the column is encrypted (base64 text storage)."""
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column(
            "secret", EncryptedType(sa.String, storage="base64", allow_plaintext=allow_plaintext)
        ),
        sa.Column("born", sa.Date),
        sa.Column("born_enc", EncryptedType(sa.Date)),
    )


def _stored(engine: sa.Engine, name: str) -> dict[int, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text(f"SELECT id, secret FROM {name}")).all())


def test_allow_plaintext_reads_a_half_migrated_column(engine: sa.Engine, plain_table: str) -> None:
    strict = _encrypted_view(plain_table)
    lenient = _encrypted_view(plain_table, allow_plaintext=True)
    with engine.begin() as conn:
        conn.execute(lenient.update().where(lenient.c.id == 0).values(secret="now encrypted"))
        with pytest.raises(MalformedEnvelopeError):
            conn.execute(sa.select(strict.c.secret).where(strict.c.id == 1)).scalar()
        got = dict(conn.execute(sa.select(lenient.c.id, lenient.c.secret)).all())
    assert got[0] == "now encrypted" and got[1] == NAMES[1] and got[len(NAMES)] is None
    assert _stored(engine, plain_table)[0] != "now encrypted"  # writes always encrypt


def test_allow_plaintext_still_fails_closed_on_a_bad_envelope(
    engine: sa.Engine, plain_table: str
) -> None:
    lenient = _encrypted_view(plain_table, allow_plaintext=True)
    with engine.begin() as conn:
        conn.execute(lenient.update().where(lenient.c.id == 0).values(secret="x"))
    sqla_envelope.configure(Encryptor(LocalKeyring.generate("other")))
    with engine.connect() as conn, pytest.raises(DecryptionError):
        conn.execute(sa.select(lenient.c.secret).where(lenient.c.id == 0)).scalar()


def test_encrypt_column_in_place_then_decrypt_it_back(engine: sa.Engine, plain_table: str) -> None:
    table = _encrypted_view(plain_table)
    report = encrypt_column(engine, table.c.secret, batch_size=5)
    assert (report.changed, report.skipped) == (len(NAMES), 1)
    stored = _stored(engine, plain_table)
    import base64

    assert all(
        unpack_envelope(base64.b64decode(v)).version == 2
        for k, v in stored.items()
        if v is not None
    )
    with engine.connect() as conn:
        assert conn.execute(sa.select(table.c.secret).order_by(table.c.id)).scalars().all() == [
            *NAMES,
            None,
        ]
    again = encrypt_column(engine, table.c.secret)
    assert (again.changed, again.skipped) == (0, len(NAMES) + 1)
    back = decrypt_column(engine, table.c.secret, batch_size=4)
    assert back.changed == len(NAMES)
    assert _stored(engine, plain_table) == {**dict(enumerate(NAMES)), len(NAMES): None}


def test_encrypt_column_from_a_plaintext_source_of_another_type(
    engine: sa.Engine, plain_table: str
) -> None:
    table = _encrypted_view(plain_table)
    report = encrypt_column(engine, table.c.born_enc, source=table.c.born, batch_size=6)
    assert (report.changed, report.skipped) == (len(NAMES), 1)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.born, table.c.born_enc).order_by(table.c.id)).all()
    assert all(plain == encrypted for plain, encrypted in rows)
    assert encrypt_column(engine, table.c.born_enc, source=table.c.born).changed == 0
    # and back out, into the plaintext column
    with engine.begin() as conn:
        conn.execute(sa.update(table).values(born=None))
    back = decrypt_column(engine, table.c.born_enc, target=table.c.born)
    assert back.changed == len(NAMES)
    with engine.connect() as conn:
        assert conn.execute(sa.select(table.c.born).where(table.c.id == 3)).scalar() == dt.date(
            1990, 1, 4
        )


def test_a_row_changed_during_encrypt_column_is_left_for_the_next_run(
    engine: sa.Engine, plain_table: str
) -> None:
    table = _encrypted_view(plain_table)
    edited: list[int] = []

    def app_edits_between_read_and_write(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        # Runs just before the walker's guarded UPDATE of a batch: the row it read
        # has changed since, as if another client had written it.
        if (
            statement.lstrip().upper().startswith("UPDATE")
            and plain_table in statement
            and not edited
        ):
            row_id = 2
            cursor.connection.cursor().execute(
                f"UPDATE {plain_table} SET secret = 'edited' WHERE id = {row_id}"
            )
            edited.append(row_id)

    sa.event.listen(engine, "before_cursor_execute", app_edits_between_read_and_write)
    try:
        first = encrypt_column(engine, table.c.secret, batch_size=5)
    finally:
        sa.event.remove(engine, "before_cursor_execute", app_edits_between_read_and_write)
    assert first.conflicts == 1 and first.changed == len(NAMES) - 1
    assert _stored(engine, plain_table)[2] == "edited"  # the concurrent write was kept
    second = encrypt_column(engine, table.c.secret)
    assert (second.changed, second.conflicts) == (1, 0)
    with engine.connect() as conn:
        values = conn.execute(sa.select(table.c.secret).order_by(table.c.id)).scalars().all()
    assert values == [NAMES[0], NAMES[1], "edited", *NAMES[3:], None]


def test_in_place_needs_a_text_or_binary_logical_type(engine: sa.Engine, plain_table: str) -> None:
    table = _encrypted_view(plain_table)
    with pytest.raises(ConfigurationError, match="source="):
        encrypt_column(engine, table.c.born_enc)
    with pytest.raises(ConfigurationError):
        encrypt_column(engine, table.c.secret, source=table.c.secret)


def test_encrypt_column_reports_an_envelope_that_does_not_decrypt(
    engine: sa.Engine, plain_table: str
) -> None:
    table = _encrypted_view(plain_table)
    encrypt_column(engine, table.c.secret)
    sqla_envelope.configure(Encryptor(LocalKeyring.generate("stranger")))
    report = encrypt_column(engine, table.c.secret, strict=False)
    assert report.failed == len(NAMES) and report.changed == 0
    with pytest.raises(DecryptionError):
        encrypt_column(engine, table.c.secret)


def test_a_damaged_envelope_is_reported_never_taken_for_plaintext(
    engine: sa.Engine, plain_table: str
) -> None:
    # Row 3's envelope cut short (a column too narrow, a bad copy): encrypting it
    # "as plaintext" would seal the damaged bytes into a valid envelope for good,
    # and decrypting the column would leave them behind as if they were a value.
    table = _encrypted_view(plain_table)
    encrypt_column(engine, table.c.secret)
    cut = _stored(engine, plain_table)[3][:24]
    raw = sa.table(plain_table, sa.column("id"), sa.column("secret"))
    with engine.begin() as conn:
        conn.execute(raw.update().where(raw.c.id == 3).values(secret=cut))
    for operation in (encrypt_column, decrypt_column):
        report = operation(engine, table.c.secret, strict=False)
        assert [pk for pk, _ in report.failures] == [(3,)], operation.__name__
        assert _stored(engine, plain_table)[3] == cut  # left as it was, for a human to see
        with pytest.raises(MalformedEnvelopeError):
            operation(engine, table.c.secret)


def test_a_failed_batch_update_does_not_quote_its_values(
    engine: sa.Engine, plain_table: str
) -> None:
    # Decrypting into a column too narrow for the values: the database refuses the
    # batch UPDATE, whose parameters are the plaintext being written.
    table = _encrypted_view(plain_table)
    encrypt_column(engine, table.c.secret)
    md = sa.MetaData()
    narrow = sa.Table(
        "mig_narrow",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("secret", table.c.secret.type),
        sa.Column("plain", sa.String(3)),
        sa.CheckConstraint("plain IS NULL OR length(plain) < 4", name="plain_is_short"),
    )
    md.drop_all(engine)
    md.create_all(engine)
    try:
        with engine.begin() as conn:
            rows = conn.execute(sa.select(table.c.id, table.c.secret).where(table.c.id < 3)).all()
            conn.execute(narrow.insert(), [{"id": i, "secret": v, "plain": None} for i, v in rows])
        with pytest.raises(sa.exc.DBAPIError) as failure:
            decrypt_column(engine, narrow.c.secret, target=narrow.c.plain)
        assert failure.value.params is None and failure.value.hide_parameters
        if engine.dialect.name != "postgresql":  # its own DETAIL line may show the row
            assert "person-" not in str(failure.value)
    finally:
        md.drop_all(engine)


def test_inside_an_alembic_style_transaction(engine: sa.Engine, plain_table: str) -> None:
    table = _encrypted_view(plain_table)
    with engine.connect() as conn, conn.begin():
        report = encrypt_column(conn, table.c.secret, batch_size=7)  # savepoints per batch
        assert report.changed == len(NAMES)
    with engine.connect() as conn:
        assert conn.execute(sa.select(table.c.secret).where(table.c.id == 2)).scalar() == NAMES[2]
