"""The Keyring protocol: the small surface a key service must offer.

A keyring owns master keys that never leave it. It hands out fresh data keys
with their wrapped form, wraps a given data key, unwraps one, and says whether a
wrapped key is under its current primary key (which is how rotation knows what
is left to do). Implement these four methods to plug in another key service
(GCP KMS, Azure Key Vault, Vault Transit); docs/keyrings.md walks through it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, TypeVar, runtime_checkable

from ..context import EncryptionContext
from ..envelope import WrappedKey
from ..errors import EnvelopeError, KeyringError

__all__ = ["DataKey", "Keyring", "call_keyring", "keyring_failure"]

_T = TypeVar("_T")


class DataKey(NamedTuple):
    """A new data key: its plaintext bytes and every wrapped copy to store."""

    plaintext: bytes
    wrapped_keys: tuple[WrappedKey, ...]

    def __repr__(self) -> str:
        # protect key: never let the plaintext data key reach a log or traceback
        refs = [key.key_ref for key in self.wrapped_keys]
        return f"DataKey(plaintext=<hidden>, key_refs={refs!r})"


@runtime_checkable
class Keyring(Protocol):
    """What the Encryptor needs from a key service.

    Every method receives the value's canonical context; a keyring must bind the
    wrapped key to it (as AAD, or as the KMS EncryptionContext) so that a wrapped
    key copied elsewhere does not unwrap. Failures of the service raise
    ``KeyringError``; a wrapped key that is not for this keyring, altered, or bound
    to another context raises ``DecryptionError``.
    """

    def generate_data_key(self, context: EncryptionContext) -> DataKey:
        """Return a fresh random 256-bit data key and its wrapped copies, primary first."""
        ...

    def wrap_data_key(self, data_key: bytes, context: EncryptionContext) -> tuple[WrappedKey, ...]:
        """Wrap an existing data key under the primary (and any additional) key."""
        ...

    def unwrap_data_key(
        self, wrapped_keys: Sequence[WrappedKey], context: EncryptionContext
    ) -> bytes:
        """Unwrap one of ``wrapped_keys`` whose key reference this keyring holds.

        Chooses by key reference, never by trial decryption.
        """
        ...

    def is_primary(self, wrapped_key: WrappedKey) -> bool:
        """True if ``wrapped_key`` is under this keyring's current primary key."""
        ...


def keyring_failure(keyring: object, action: str, exc: Exception) -> KeyringError:
    """A KeyringError for an exception of a keyring's own, chained so it survives SQLAlchemy.

    A third-party keyring that raises something of its own still fails closed, as
    a KeyringError that names the keyring; the message holds only its type name.
    """
    error = KeyringError(f"{type(keyring).__name__} failed to {action}: {type(exc).__name__}")
    error.chain(exc)
    return error


def call_keyring(keyring: object, action: str, method: Callable[..., _T], *args: object) -> _T:
    """Call a keyring method; anything but our own errors becomes a KeyringError."""
    try:
        return method(*args)
    except EnvelopeError:
        raise
    except Exception as exc:
        raise keyring_failure(keyring, action, exc) from exc
