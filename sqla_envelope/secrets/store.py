"""SecretStore: credstash's job on any SQL database, each secret under its own data key.

One row per (name, version). Each value is sealed by the Encryptor under a
fresh data key, with an encryption context that binds it to this store, its
name and its version, plus the caller's own context (which a KMS keyring sends
to KMS, and CloudTrail records): a ciphertext copied to another name, version
or store fails to decrypt, which credstash cannot say (its issue #134). Versions
are integers, so the latest is the numerically highest (credstash compared
zero-padded strings). The caller's context is stored beside the value, since it
is not secret (credstash did not keep it, #130), but a read must still give it.

A row may also hold a credstash item kept as credstash wrote it (``value_type``
``cs/1``, a payload starting ``credstash/1``; credstash_format.py), imported
without KMS: it is read as credstash reads it, through a KMS keyring, and bound
to nothing until ``reencrypt`` converts it.
"""

from __future__ import annotations

import builtins
import datetime as dt
import fnmatch
import json
import random
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Engine

from ..encryptor import Encryptor, get_default_encryptor
from ..errors import (
    ConfigurationError,
    DecryptionError,
    EnvelopeError,
    SecretExists,
    SecretNotFound,
)
from ..keyrings.base import Keyring
from .credstash_format import CredstashItem, pack_item, unpack_item
from .credstash_read import open_item

__all__ = ["CREDSTASH", "RESERVED_PREFIX", "Conversion", "SecretInfo", "SecretMap", "SecretStore"]

RESERVED_PREFIX = "sqla_envelope:"
# value_type of a row holding a credstash item verbatim (its value is text);
# ``WHERE value_type = 'cs/1'`` finds the rows reencrypt has still to convert.
CREDSTASH = "cs/1"
NAME_LENGTH = 255
# Concurrent writers of one name each take max(version) + 1; the losers of the
# race try the next one. Bounded so a broken database cannot spin forever.
_VERSION_RACE_RETRIES = 100
_RACE_BACKOFF_CAP = 0.05  # seconds
_PAYLOAD_SIZE = 16 * 1024 * 1024  # MEDIUMBLOB on MySQL: a secret is small
# Names compare exactly, as credstash's DynamoDB keys do: MySQL's and MariaDB's
# default collations would make "App" and "app" one key.
_NAME_TYPE = sa.String(NAME_LENGTH).with_variant(
    mysql.VARCHAR(NAME_LENGTH, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
)


@dataclass(frozen=True)
class SecretInfo:
    """One stored version of a secret, without its value."""

    name: str
    version: int
    comment: str | None
    created_at: dt.datetime | None
    context: dict[str, str] | None
    # "native", or "credstash": an imported credstash item not yet reencrypted.
    format: str = "native"


@dataclass
class Conversion:
    """What ``reencrypt`` did: rows converted, and the (name, version) of those it skipped."""

    converted: int = 0
    skipped: list[tuple[str, int]] = field(default_factory=list)


class SecretStore:
    """Named, versioned secrets in a table of ``bind`` (an Engine or a database URL).

    ``encryptor`` defaults to the configured one (``sqla_envelope.configure``),
    looked up at each call. Thread-safe as far as the Engine is.
    """

    def __init__(
        self,
        bind: Engine | str,
        encryptor: Encryptor | None = None,
        *,
        table: str = "credential_store",
    ) -> None:
        self.engine = sa.create_engine(bind) if isinstance(bind, str) else bind
        if encryptor is not None and not isinstance(encryptor, Encryptor):
            raise ConfigurationError("encryptor= takes an Encryptor or None")
        self._encryptor = encryptor
        self.table_name = table
        self.table = sa.Table(
            table,
            sa.MetaData(),
            sa.Column("name", _NAME_TYPE, primary_key=True),
            sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("payload", sa.LargeBinary(_PAYLOAD_SIZE), nullable=False),
            sa.Column("value_type", sa.String(5), nullable=False),
            sa.Column("comment", sa.Text),
            sa.Column("context", sa.JSON),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        )

    def __repr__(self) -> str:
        return f"SecretStore({self.engine.url!r}, table={self.table_name!r})"

    @property
    def encryptor(self) -> Encryptor:
        return self._encryptor if self._encryptor is not None else get_default_encryptor()

    # -- the table -----------------------------------------------------------------------

    def create_table(self, *, tags: Mapping[str, str] | None = None) -> bool:
        """Create the table if it is missing; True if it was created.

        ``tags`` (credstash's ``setup --tags``) become the new table's comment, as
        JSON; a table that exists keeps its own, as credstash's does. SQLite keeps
        no table comments: tags there raise ConfigurationError.
        """
        if tags and not self.engine.dialect.supports_comments:
            raise ConfigurationError(
                f"{self.engine.dialect.name} keeps no table comments, where tags go: "
                "tag the table on PostgreSQL, MySQL or MariaDB"
            )
        existed = sa.inspect(self.engine).has_table(self.table_name)
        if not existed and tags:
            self.table.comment = json.dumps(dict(tags), sort_keys=True)
        self.table.create(self.engine, checkfirst=True)
        return not existed

    # -- writing -------------------------------------------------------------------------

    def put(
        self,
        name: str,
        value: str | bytes,
        *,
        version: int | None = None,
        context: Mapping[str, str] | None = None,
        comment: str | None = None,
    ) -> int:
        """Store a new version of ``name`` and return its number.

        Without ``version``, the next one after the highest stored (1 for a new
        name); concurrent writers each get their own, and no write is lost. A
        version that exists raises SecretExists and changes nothing.
        """
        _check_name(name)
        if isinstance(value, str):
            plaintext, value_type = value.encode("utf-8", "surrogatepass"), "str"
        elif isinstance(value, (bytes, bytearray, memoryview)):
            plaintext, value_type = bytes(value), "bytes"
        else:
            raise ConfigurationError(f"a secret is str or bytes, not {type(value).__name__}")
        user = _user_context(context)
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                raise ConfigurationError("version= is a positive integer")
            if self._insert(name, version, plaintext, value_type, user, comment):
                return version
            raise SecretExists(f"secret {name!r} version {version} is already stored")
        for attempt in range(_VERSION_RACE_RETRIES):
            version = self.highest_version(name) + 1
            if self._insert(name, version, plaintext, value_type, user, comment):
                return version
            # Lost the race for this version: wait a random while (full jitter, as
            # for KMS throttling) so that writers that keep colliding spread out.
            time.sleep(random.uniform(0, min(_RACE_BACKOFF_CAP, 0.001 * 2**attempt)))
        raise EnvelopeError(
            f"could not store secret {name!r}: {_VERSION_RACE_RETRIES} concurrent writers "
            "took every next version first"
        )

    def _insert(
        self,
        name: str,
        version: int,
        plaintext: bytes,
        value_type: str,
        user: dict[str, str],
        comment: str | None,
    ) -> bool:
        """One INSERT; False when the version was taken (by this call's race or earlier)."""
        payload = self.encryptor.encrypt(plaintext, self._context(name, version, user))
        return self._insert_row(name, version, payload, value_type, user, comment)

    def put_credstash_item(
        self, name: str, version: int, item: CredstashItem, *, comment: str | None = None
    ) -> int:
        """Keep a credstash item as credstash wrote it, as ``version`` of ``name``.

        No key service is called: the item's data key stays wrapped by KMS as
        credstash wrapped it, and ``get`` reads it as credstash's ``get`` does
        (through a KmsKeyring holding ``item.kms_key_id``, given the context it
        was stored with, which credstash never recorded). SecretExists when the
        version is taken.
        """
        _check_name(name)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ConfigurationError("version= is a positive integer")
        if not self._insert_row(name, version, pack_item(item), CREDSTASH, {}, comment):
            raise SecretExists(f"secret {name!r} version {version} is already stored")
        return version

    def _insert_row(
        self,
        name: str,
        version: int,
        payload: bytes,
        value_type: str,
        user: dict[str, str],
        comment: str | None,
    ) -> bool:
        row = {
            "name": name,
            "version": version,
            "payload": payload,
            "value_type": value_type,
            "comment": comment,
            "context": user or None,
            "created_at": dt.datetime.now(dt.timezone.utc),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(self.table.insert(), row)
        except sa.exc.IntegrityError:
            return False
        return True

    def _context(self, name: str, version: int, user: Mapping[str, str]) -> dict[str, str]:
        return {
            **user,
            RESERVED_PREFIX + "store": self.table_name,
            RESERVED_PREFIX + "name": name,
            RESERVED_PREFIX + "version": str(version),
        }

    # -- reading -------------------------------------------------------------------------

    def highest_version(self, name: str) -> int:
        """The highest version stored for ``name``; 0 when there is none."""
        query = sa.select(sa.func.max(self.table.c.version)).where(self.table.c.name == name)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def get(
        self, name: str, *, version: int | None = None, context: Mapping[str, str] | None = None
    ) -> str | bytes:
        """The latest version of ``name``, or ``version``; str or bytes as it was put.

        ``context`` must be the one given to ``put`` (in any order). SecretNotFound
        when there is no such secret; DecryptionError (naming the secret, never
        the value) when the context differs or the row was altered.
        """
        _check_name(name)
        t = self.table
        query = sa.select(t.c.version, t.c.payload, t.c.value_type).where(t.c.name == name)
        if version is not None:
            query = query.where(t.c.version == version)
        query = query.order_by(t.c.version.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            which = f" version {version}" if version is not None else ""
            raise SecretNotFound(f"secret {name!r}{which} not found")
        return self._open(name, row.version, row.payload, row.value_type, _user_context(context))

    def _open(
        self,
        name: str,
        version: int,
        payload: bytes,
        value_type: str,
        user: dict[str, str],
        keyring: Keyring | None = None,
    ) -> str | bytes:
        try:
            if value_type == CREDSTASH:
                item = unpack_item(bytes(payload))
                return open_item(keyring or self.encryptor.keyring, item, user)
            plaintext = self.encryptor.decrypt(bytes(payload), self._context(name, version, user))
        except DecryptionError as exc:
            raise DecryptionError(
                f"secret {name!r} version {version} cannot be decrypted: give the context it "
                f"was stored with, and a keyring that holds its key ({exc})"
            ).chain(exc) from exc
        return plaintext.decode("utf-8", "surrogatepass") if value_type == "str" else plaintext

    def get_all(
        self,
        *,
        pattern: str | None = None,
        context: Mapping[str, str] | None = None,
        skip_undecryptable: bool = False,
    ) -> SecretMap:
        """The latest version of every name (matching the glob ``pattern``), in one query.

        Decrypted concurrently when the keyring waits on a network (KMS). The first
        secret that fails raises, naming it; with ``skip_undecryptable`` it is
        left out instead, and ``skipped`` (an attribute of the result) names it.
        """
        t = self.table
        latest = (
            sa.select(t.c.name, sa.func.max(t.c.version).label("version"))
            .group_by(t.c.name)
            .subquery()
        )
        query = sa.select(t.c.name, t.c.version, t.c.payload, t.c.value_type).join(
            latest, sa.and_(t.c.name == latest.c.name, t.c.version == latest.c.version)
        )
        with self.engine.connect() as conn:
            rows = [row for row in conn.execute(query) if _matches(row.name, pattern)]
        user = _user_context(context)

        def open_row(row: Any) -> tuple[str, str | bytes | DecryptionError]:
            try:
                return row.name, self._open(
                    row.name, row.version, row.payload, row.value_type, user
                )
            except DecryptionError as exc:
                if not skip_undecryptable:
                    raise
                return row.name, exc

        encryptor = self.encryptor
        remote = bool(getattr(encryptor.keyring, "unwraps_remotely", False))
        # Threads only for the values whose key must come from KMS: a cached key
        # decrypts in microseconds, less than handing it to a thread costs. A
        # credstash item's key is never cached: each is a KMS Decrypt.
        cold, opened = [], []
        for row in rows:
            if row.value_type != CREDSTASH and encryptor.has_key_for(bytes(row.payload)):
                opened.append(open_row(row))
            else:
                remote = remote or row.value_type == CREDSTASH
                cold.append(row)
        if remote and len(cold) > 1:
            with ThreadPoolExecutor(min(len(cold), encryptor.max_workers)) as pool:
                opened += pool.map(open_row, cold)
        else:
            opened += [open_row(row) for row in cold]
        result = SecretMap()
        for name, value in sorted(opened, key=lambda pair: pair[0]):
            if isinstance(value, DecryptionError):
                result.skipped.append(name)
            else:
                result[name] = value
        return result

    def list(self, *, pattern: str | None = None) -> builtins.list[SecretInfo]:
        """Every stored version (of the names matching ``pattern``), by name then version."""
        query = sa.select(*self._info_columns())
        with self.engine.connect() as conn:
            # Sorted here: each database's collation orders names its own way.
            rows = sorted(conn.execute(query), key=lambda row: (row.name, row.version))
        return [_info(row) for row in rows if _matches(row.name, pattern)]

    def keys(self) -> builtins.list[str]:
        """Every name, sorted, once."""
        with self.engine.connect() as conn:
            names = conn.execute(sa.select(self.table.c.name).distinct()).scalars()
            return sorted(names)

    def history(self, name: str) -> builtins.list[SecretInfo]:
        """Every version of ``name``, oldest first; SecretNotFound when there is none."""
        _check_name(name)
        t = self.table
        query = sa.select(*self._info_columns()).where(t.c.name == name).order_by(t.c.version)
        with self.engine.connect() as conn:
            found = [_info(row) for row in conn.execute(query)]
        if not found:
            raise SecretNotFound(f"secret {name!r} not found")
        return found

    def _info_columns(self) -> tuple[Any, ...]:
        t = self.table
        return (t.c.name, t.c.version, t.c.comment, t.c.created_at, t.c.context, t.c.value_type)

    # -- converting credstash items ------------------------------------------------------

    def reencrypt(
        self,
        *,
        pattern: str | None = None,
        context: Mapping[str, str] | None = None,
        keyring: Keyring | None = None,
        skip_undecryptable: bool = False,
    ) -> Conversion:
        """Convert the credstash items kept verbatim (of names matching ``pattern``) to ours.

        Each is read as ``get`` reads it, under ``context`` (credstash's items must
        be given the context they were stored with), with ``keyring`` (a
        KmsKeyring holding credstash's key; by default the Encryptor's), then
        sealed by the Encryptor, bound to store, name and version, with the same
        version, comment and creation time. Each row is converted on its own, and
        only if it still holds the same item, so a stopped run is run again and
        concurrent runs do not clash. The first item that cannot be read raises,
        naming it; with ``skip_undecryptable`` it is left as it is and named in
        the result's ``skipped``.
        """
        t = self.table
        query = (
            sa.select(t.c.name, t.c.version, t.c.payload)
            .where(t.c.value_type == CREDSTASH)
            .order_by(t.c.name, t.c.version)
        )
        with self.engine.connect() as conn:
            rows = [row for row in conn.execute(query) if _matches(row.name, pattern)]
        user = _user_context(context)
        report = Conversion()
        for row in rows:
            try:
                value = self._open(row.name, row.version, row.payload, CREDSTASH, user, keyring)
            except DecryptionError:
                if not skip_undecryptable:
                    raise
                report.skipped.append((row.name, int(row.version)))
                continue
            plaintext = str(value).encode("utf-8")
            payload = self.encryptor.encrypt(plaintext, self._context(row.name, row.version, user))
            statement = (
                t.update()
                .where(
                    t.c.name == row.name,
                    t.c.version == row.version,
                    t.c.value_type == CREDSTASH,
                    t.c.payload == row.payload,
                )
                .values(payload=payload, value_type="str", context=user or None)
            )
            with self.engine.begin() as conn:
                report.converted += int(conn.execute(statement).rowcount)
        return report

    # -- deleting ------------------------------------------------------------------------

    def delete(self, name: str, *, version: int | None = None) -> int:
        """Delete every version of ``name``, or one; the number of versions deleted."""
        _check_name(name)
        t = self.table
        statement = t.delete().where(t.c.name == name)
        if version is not None:
            statement = statement.where(t.c.version == version)
        with self.engine.begin() as conn:
            return int(conn.execute(statement).rowcount)

    def prune(self, name: str, *, keep: int) -> int:
        """Delete all but the ``keep`` latest versions of ``name``; the number deleted."""
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ConfigurationError("keep= is a positive integer: prune never deletes them all")
        versions = [info.version for info in self.history(name)]
        doomed = versions[:-keep]
        if not doomed:
            return 0
        t = self.table
        statement = t.delete().where(t.c.name == name, t.c.version.in_(doomed))
        with self.engine.begin() as conn:
            return int(conn.execute(statement).rowcount)


class SecretMap(dict[str, "str | bytes"]):
    """What ``get_all`` returns: name -> value, and the names it ``skipped``."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: list[str] = []

    def __repr__(self) -> str:  # never the values
        return f"SecretMap(<{len(self)} secrets>, skipped={self.skipped!r})"


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name or len(name) > NAME_LENGTH:
        raise ConfigurationError(f"a secret's name is a non-empty string of at most {NAME_LENGTH}")


def _user_context(context: Mapping[str, str] | None) -> dict[str, str]:
    if not context:
        return {}
    user = dict(context)
    for key, value in user.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigurationError("a secret's context maps strings to strings")
        if key.startswith(RESERVED_PREFIX):
            raise ConfigurationError(f"context keys starting with {RESERVED_PREFIX!r} are reserved")
    return user


def _matches(name: str, pattern: str | None) -> bool:
    """Glob matching (``*``, ``?``, ``[...]``), case-sensitive; credstash used a regex."""
    return pattern is None or fnmatch.fnmatchcase(name, pattern)


def _info(row: Any) -> SecretInfo:
    created = row.created_at
    if created is not None and created.tzinfo is None:
        created = created.replace(tzinfo=dt.timezone.utc)  # SQLite and MySQL drop the zone
    kind = "credstash" if row.value_type == CREDSTASH else "native"
    return SecretInfo(row.name, int(row.version), row.comment, created, row.context, kind)
