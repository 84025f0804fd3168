"""LocalKeyring: master keys held by the process, for development, tests and on-premises."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from ..aead import DATA_KEY_SIZE, MASTER_KEY_SIZE, LocalKeyWrapper, random_bytes
from ..context import EncryptionContext
from ..envelope import WrappedKey
from ..errors import ConfigurationError, DecryptionError
from .base import DataKey

__all__ = ["KEY_FILE_FORMAT", "LocalKeyring"]

KEY_FILE_FORMAT = "sqla-envelope-keyring"
_KEY_FILE_VERSION = 1
log = logging.getLogger("sqla_envelope")
# Printable ASCII without spaces or quotes, so a key id can sit in a SQL literal
# and in the envelope's ASCII key reference.
_KEY_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,255}")


def _check_key_id(key_id: object) -> str:
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise ConfigurationError(
            "a key id must be 1 to 255 characters from A-Z a-z 0-9 . _ : / + = @ -"
        )
    return key_id


class _KeySet(NamedTuple):
    """A keyring's keys, swapped as one object when its key file is reloaded."""

    keys: dict[str, bytes]
    wrappers: dict[str, LocalKeyWrapper]
    primary: str
    primary_wrapper: LocalKeyWrapper


class _Signature(NamedTuple):
    inode: int
    size: int
    mtime_ns: int


def _signature(path: Path) -> _Signature | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return _Signature(found.st_ino, found.st_size, found.st_mtime_ns)


class _KeyFileWatch:
    """Where a keyring's keys came from, and when to look at the file again."""

    __slots__ = ("clock", "interval", "next_check", "path", "signature")

    def __init__(self, path: Path, interval: float, clock: Callable[[], float]) -> None:
        self.path = path
        self.interval = interval
        self.clock = clock
        self.signature = _signature(path)
        self.next_check = clock() + interval


class LocalKeyring:
    """Master keys in this process; new data keys are wrapped under ``primary``.

    Every key in ``keys`` can unwrap, so rotating is: add a new key, make it the
    primary, ``rewrap`` the table, then drop the old key. Raises
    ``ConfigurationError`` for a key that is not 32 bytes or an unknown primary.
    A keyring read with ``from_file`` follows its file (see there).
    """

    mode = "local"  # the cost mode audit events report: no key service involved
    # An unwrap is one AES-SIV decryption: the Encryptor skips single flight for it.
    unwraps_in_memory = True

    def __init__(self, keys: Mapping[str, bytes], primary: str | None = None) -> None:
        if not keys:
            raise ConfigurationError("a LocalKeyring needs at least one master key")
        checked: dict[str, bytes] = {}
        for key_id, key in keys.items():
            _check_key_id(key_id)
            if not isinstance(key, (bytes, bytearray)) or len(key) != MASTER_KEY_SIZE:
                raise ConfigurationError(
                    f"master key {key_id!r} must be exactly {MASTER_KEY_SIZE} bytes"
                )
            checked[key_id] = bytes(key)
        if primary is None:
            if len(checked) != 1:
                raise ConfigurationError("name the primary key when a keyring holds several")
            primary = next(iter(checked))
        if primary not in checked:
            raise ConfigurationError(f"primary key {primary!r} is not in the keyring")
        wrappers = {key_id: LocalKeyWrapper(key) for key_id, key in checked.items()}
        self._set = _KeySet(checked, wrappers, primary, wrappers[primary])
        self._watch: _KeyFileWatch | None = None

    @property
    def primary(self) -> str:
        """The id of the key new data keys are wrapped under."""
        return self._set.primary

    @property
    def _keys(self) -> dict[str, bytes]:
        return self._set.keys

    @classmethod
    def generate(cls, key_id: str | None = None) -> LocalKeyring:
        """A keyring with one fresh random 256-bit master key.

        The default key id is 8 random hex digits: short, because every envelope
        stores it (81 + len(key_id) bytes of overhead per value, so 89 here).
        """
        key_id = _check_key_id(key_id) if key_id is not None else random_bytes(4).hex()
        return cls({key_id: random_bytes(MASTER_KEY_SIZE)})

    def with_new_primary(self, key_id: str | None = None) -> LocalKeyring:
        """A copy of this keyring with a fresh primary key; the old keys still unwrap."""
        added = self.with_new_key(key_id)
        return added.with_primary(added.key_ids[-1])

    def with_new_key(self, key_id: str | None = None) -> LocalKeyring:
        """A copy with a fresh key that unwraps but is not yet the primary.

        The first step of a rollout without outages: deploy the key file with the
        new key to every process first, so all of them can read what it will
        wrap, and only then make it the primary (``with_primary``).
        """
        fresh = LocalKeyring.generate(key_id)
        if fresh.primary in self._keys:
            raise ConfigurationError(f"key id {fresh.primary!r} is already in the keyring")
        return LocalKeyring({**self._keys, **fresh._keys}, primary=self.primary)

    def with_primary(self, key_id: str) -> LocalKeyring:
        """A copy whose primary is ``key_id``, a key this keyring already holds.

        Undoing a rotation: make the previous key primary again, then ``rewrap``.
        """
        if key_id not in self._keys:
            raise ConfigurationError(f"key {key_id!r} is not in the keyring")
        return LocalKeyring(self._keys, primary=key_id)

    def without(self, key_id: str) -> LocalKeyring:
        """A copy without ``key_id``: the last step of a rotation, once no value uses it.

        Values still under that key can no longer be read, so check first (plain
        SQL on the key reference, docs/format.md). The primary cannot be removed.
        """
        if key_id == self.primary:
            raise ConfigurationError(
                f"key {key_id!r} is the primary; make another key primary first"
            )
        if key_id not in self._keys:
            raise ConfigurationError(f"key {key_id!r} is not in the keyring")
        return LocalKeyring({k: v for k, v in self._keys.items() if k != key_id}, self.primary)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def __repr__(self) -> str:
        # protect key: ids only
        return f"LocalKeyring(key_ids={list(self._keys)!r}, primary={self.primary!r})"

    # -- the Keyring protocol --------------------------------------------------

    def generate_data_key(self, context: EncryptionContext) -> DataKey:
        if self._watch is not None and self._watch.clock() >= self._watch.next_check:
            self._follow_file()
        keys = self._set  # one read: a reload swaps the whole set
        data_key = random_bytes(DATA_KEY_SIZE)
        blob = keys.primary_wrapper.wrap(data_key, context.canonical)
        return DataKey(data_key, (WrappedKey(keys.primary, blob),))

    def wrap_data_key(self, data_key: bytes, context: EncryptionContext) -> tuple[WrappedKey, ...]:
        keys = self._set
        return (WrappedKey(keys.primary, keys.primary_wrapper.wrap(data_key, context.canonical)),)

    def unwrap_data_key(
        self, wrapped_keys: Sequence[WrappedKey], context: EncryptionContext
    ) -> bytes:
        wrappers = self._set.wrappers
        for key_ref, blob in wrapped_keys:
            wrapper = wrappers.get(key_ref)
            if wrapper is not None:
                return wrapper.unwrap(blob, context.canonical)
        # A value under a key this process has not loaded yet: another process
        # may have added it to the key file. Look once, then decide.
        if self._watch is not None and self._follow_file():
            return self.unwrap_data_key(wrapped_keys, context)
        refs = [key.key_ref for key in wrapped_keys]
        raise DecryptionError(
            f"no key in this keyring can unwrap the data key: the value is under {refs!r}, "
            f"the keyring holds {list(wrappers)!r}"
        )

    def is_primary(self, wrapped_key: WrappedKey) -> bool:
        return wrapped_key.key_ref == self.primary

    # -- key files ---------------------------------------------------------------

    def to_file(self, path: str | os.PathLike[str]) -> None:
        """Write the keyring as a JSON key file readable by its owner only (mode 0600).

        Written to a temporary file in the same folder and renamed into place, so a
        crash never leaves a half-written key file.
        """
        document = {
            "format": KEY_FILE_FORMAT,
            "version": _KEY_FILE_VERSION,
            "primary": self.primary,
            "keys": {
                key_id: base64.b64encode(key).decode("ascii") for key_id, key in self._keys.items()
            },
        }
        target = Path(path)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".sqla-envelope-", dir=target.parent or ".")
        except OSError as exc:
            # Name the key file the caller asked for, not our temporary file.
            raise OSError(exc.errno, exc.strerror, str(target)) from None
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=2)
                handle.write("\n")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        follow: bool = True,
        check_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> LocalKeyring:
        """Load a key file written by ``to_file`` (format in docs/keyrings.md).

        Raises ``ConfigurationError`` if the file can be read by group or others
        (on POSIX), or is not a valid key file; the message never quotes key bytes.

        With ``follow`` (the default) the keyring follows the file, so a key
        rollout needs no restart: a value under a key id it does not hold makes
        it look at the file again at once (one ``stat``, and a read if the file
        changed), and writes look at most every ``check_interval`` seconds, so a
        new primary (``keys set-primary``) is taken up within that time. A file
        that became invalid or readable by others is not loaded: the keys held
        stay in use and the problem is logged. ``reload()`` does the same on
        demand (from a signal handler, say) and raises instead.
        """
        keyring = cls._read_file(Path(path))
        if follow:
            keyring._watch = _KeyFileWatch(Path(path), check_interval, clock)
        return keyring

    def reload(self) -> bool:
        """Read the key file again now if it changed; True if the keys changed.

        Raises ConfigurationError for a keyring not read from a file, or a file
        that is no longer a valid key file (the keys held stay in use).
        """
        watch = self._watch
        if watch is None:
            raise ConfigurationError("this LocalKeyring was not read from a key file")
        signature = _signature(watch.path)
        watch.next_check = watch.clock() + watch.interval
        if signature == watch.signature:
            return False
        fresh = self._read_file(watch.path)
        watch.signature = signature
        changed = fresh._set.keys != self._set.keys or fresh.primary != self.primary
        self._set = fresh._set
        return changed

    def _follow_file(self) -> bool:
        """``reload()`` for the hot paths: a failure is logged, never raised."""
        try:
            return self.reload()
        except ConfigurationError as exc:
            log.error("sqla_envelope: key file not reloaded, keeping the keys held: %s", exc)
            return False

    @classmethod
    def _read_file(cls, target: Path) -> LocalKeyring:
        try:
            mode = target.stat().st_mode
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read key file {str(target)!r}: {exc.strerror}"
            ) from None
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigurationError(
                f"key file {str(target)!r} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {target}"
            )
        try:
            document = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ConfigurationError(f"key file {str(target)!r} is not valid JSON") from None
        return cls._from_document(document, str(target))

    @classmethod
    def _from_document(cls, document: object, where: str) -> LocalKeyring:
        if (
            not isinstance(document, dict)
            or document.get("format") != KEY_FILE_FORMAT
            or document.get("version") != _KEY_FILE_VERSION
            or not isinstance(document.get("keys"), dict)
        ):
            raise ConfigurationError(
                f"{where!r} is not a {KEY_FILE_FORMAT} file of version {_KEY_FILE_VERSION}"
            )
        keys: dict[str, bytes] = {}
        for key_id, encoded in document["keys"].items():
            try:
                keys[key_id] = base64.b64decode(encoded, validate=True)
            except (TypeError, binascii.Error):
                raise ConfigurationError(
                    f"key {key_id!r} in {where!r} is not valid base64"
                ) from None
        return cls(keys, primary=document.get("primary"))
