"""Rotate the master key: a new primary key, every value's data key rewrapped under it.

1. Add a fresh key to the key file and make it the primary (the old key stays, so
   values not yet rewrapped still decrypt). The file is written before any value
   depends on the new key, and the previous primary is recorded in a sidecar,
   ``<key file stem>.rotations.json``, for the downgrade.
2. rewrap() each encrypted column: each value is sealed again under a fresh data
   key wrapped by the new key; values already under it (in format v2) are skipped.

The downgrade rewraps back to the previous primary and makes it the primary again.
The key this migration added stays in the key file (harmless, and nothing is lost
if the downgrade is interrupted); remove it with care once nothing uses it.

Other processes using the key file (the application) must load the new file
before this runs: a keyring without the new key cannot read rewrapped values.

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-06 09:30:00

"""

import json
from pathlib import Path
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqla_envelope
from sqla_envelope import Encryptor, LocalKeyring


# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

customers = sa.Table(
    "customers",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("national_id", sqla_envelope.EncryptedType(sa.String(20), storage="base64")),
    sa.Column("phone", sqla_envelope.EncryptedType(sa.String(30))),
)
ENCRYPTED_COLUMNS = [customers.c.national_id, customers.c.phone]


def upgrade() -> None:
    key_file = _key_file()
    keyring = LocalKeyring.from_file(key_file)
    rotations = _read_rotations(key_file)
    done = rotations.get(revision)
    if done is not None and done["new_primary"] == keyring.primary:
        rotated = keyring  # an earlier run wrote the key file and failed later: finish it
    else:
        rotated = keyring.with_new_primary()
        rotations[revision] = {"previous_primary": keyring.primary, "new_primary": rotated.primary}
        _write_rotations(key_file, rotations)
        rotated.to_file(key_file)  # on disk before any value is wrapped under it
    _rewrap_all(rotated)


def downgrade() -> None:
    key_file = _key_file()
    current = LocalKeyring.from_file(key_file)
    rotations = _read_rotations(key_file)
    done = rotations.get(revision)
    if done is not None:
        previous = done["previous_primary"]
    else:
        # No sidecar (deleted, or the key file was copied alone): with exactly two
        # keys the previous primary is the other one.
        others = [key_id for key_id in current.key_ids if key_id != current.primary]
        if len(others) != 1:
            raise RuntimeError(
                f"{_rotations_file(key_file)} does not say which key was the primary "
                f"before {revision}, and the key file holds {len(others) + 1} keys"
            )
        previous = others[0]
    restored = current.with_primary(previous)
    _rewrap_all(restored)
    restored.to_file(key_file)
    rotations.pop(revision, None)
    _write_rotations(key_file, rotations)


def _rewrap_all(keyring: LocalKeyring) -> None:
    # The keyring holds both keys: it reads values under either, and writes under
    # its primary. Installing it as the default makes later migrations use it too.
    sqla_envelope.configure(Encryptor(keyring))
    bind = op.get_bind()
    for column in ENCRYPTED_COLUMNS:
        sqla_envelope.rewrap(bind, column, keyring)


def _key_file() -> Path:
    # env.py puts the key file it configured the encryptor from here.
    return Path(op.get_context().config.attributes["sqla_envelope_key_file"])


def _rotations_file(key_file: Path) -> Path:
    # example.keys.json -> example.keys.rotations.json; key ids only, no key material.
    return key_file.with_suffix(".rotations.json")


def _read_rotations(key_file: Path) -> dict[str, dict[str, str]]:
    path = _rotations_file(key_file)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _write_rotations(key_file: Path, rotations: dict[str, dict[str, str]]) -> None:
    path = _rotations_file(key_file)
    if not rotations:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rotations, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
