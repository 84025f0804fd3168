"""The engine events around statements leave results intact on every database."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

import sqla_envelope
from sqla_envelope import EncryptedType, Encryptor, LocalKeyring


class RemoteLikeKeyring(LocalKeyring):
    """A local keyring that asks for prefetching, as a KMS keyring does."""

    unwraps_remotely = True
    reserved: list[int]

    def reserve_data_keys(self, context: Any, count: int) -> None:
        self.reserved.append(count)


def test_returning_rows_survive_prefetching(engine: sa.Engine, metadata: sa.MetaData) -> None:
    keyring = RemoteLikeKeyring.generate()
    keyring.reserved = []
    encryptor = Encryptor(keyring)
    assert encryptor.prefetch
    sqla_envelope.configure(encryptor)
    table = sa.Table(
        "batch_rows",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("token", EncryptedType(sa.String(20))),
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        if engine.dialect.insert_returning:
            rows = conn.execute(
                table.insert().returning(table.c.id, table.c.token),
                [{"token": "a"}, {"token": "b"}, {"token": None}],
            ).all()
            assert sorted(r.token or "" for r in rows) == ["", "a", "b"]
        else:
            conn.execute(table.insert(), [{"token": "a"}, {"token": "b"}, {"token": None}])
    assert keyring.reserved == [2]  # NULLs need no data key
    encryptor.clear_cache()
    with engine.connect() as conn:
        got = conn.execute(sa.select(table.c.token).order_by(table.c.id)).scalars().all()
    assert got == ["a", "b", None]
    assert encryptor.stats()["cache_hits"] == 2  # prefetched, then read from the cache
