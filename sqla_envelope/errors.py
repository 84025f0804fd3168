"""The exceptions sqla-envelope raises, all under one root.

```text
EnvelopeError
 ├── ConfigurationError          the library is used in a way that cannot work
 ├── KeyringError                the key service could not do its job
 ├── InvalidValueError           a value does not fit the column's logical type
 ├── UnsupportedComparisonError  SQL that compares or transforms a randomized ciphertext
 ├── SecretNotFound              no secret of that name (and version) in the store
 ├── SecretExists                that version of the secret is already stored
 └── DecryptionError             a stored value cannot be decrypted
      ├── MalformedEnvelopeError the bytes are not an envelope we know
      └── TenantShreddedError    the value's tenant was crypto-shredded
```

No message ever holds plaintext or key material: they name tables, columns, key
references and Python types, never values.
"""

from __future__ import annotations

# SQLAlchemy wraps any exception raised while it processes parameters in a
# StatementError whose message quotes the statement's *parameters*, which are the
# plaintext values. DontWrapMixin keeps our errors unwrapped, so callers can catch
# them by type and nothing sensitive is formatted into the message.
from typing import Any

from sqlalchemy.exc import DontWrapMixin

__all__ = [
    "ConfigurationError",
    "DecryptionError",
    "EnvelopeError",
    "InvalidValueError",
    "KeyringError",
    "MalformedEnvelopeError",
    "SecretExists",
    "SecretNotFound",
    "TenantShreddedError",
    "UnsupportedComparisonError",
]


_CAUSE: Any = BaseException.__dict__["__cause__"]


class EnvelopeError(DontWrapMixin, Exception):
    """Root of every error raised by sqla-envelope; catch it to catch them all."""

    _first_cause: BaseException | None = None

    # SQLAlchemy re-raises an unwrapped error as ``raise err from err`` when it
    # comes out of parameter processing, which replaces the real cause (the
    # botocore error behind a KeyringError, say) with the error itself. Errors
    # raised with ``chain()`` keep their first cause visible as ``__cause__``.
    @property
    def __cause__(self) -> BaseException | None:
        cause: BaseException | None = _CAUSE.__get__(self)
        if cause is self or cause is None:
            return self._first_cause
        return cause

    @__cause__.setter
    def __cause__(self, value: BaseException | None) -> None:
        _CAUSE.__set__(self, value)

    def chain(self, cause: BaseException) -> EnvelopeError:
        """Record ``cause`` so it survives re-raising; use as ``raise err.chain(exc) from exc``."""
        self._first_cause = cause
        return self


class ConfigurationError(EnvelopeError):
    """Raised when the library is set up in a way that cannot work.

    No encryptor configured for a column, a key file readable by other users, a
    master key of the wrong length, an unsupported logical type. Nothing is stored
    when it is raised.
    """


class KeyringError(EnvelopeError):
    """Raised when a keyring cannot wrap or unwrap (service down, throttled, denied).

    The message names the key; the underlying error is chained as ``__cause__``.
    """

    def __init__(self, message: str, *, key_id: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id


class InvalidValueError(EnvelopeError, ValueError):
    """Raised when a value cannot be encoded as the column's logical type.

    A ``str`` for an Integer column, an integer outside BigInteger's range. The
    message names the expected and received Python types, never the value.
    """


class UnsupportedComparisonError(EnvelopeError, TypeError):
    """Raised when SQL would compare or transform an encrypted column.

    Every value is encrypted under its own random key and nonce, so a ciphertext
    never equals another: ``WHERE ssn = 'x'`` would silently match nothing, and
    ``ORDER BY``, ``length()`` or ``GROUP BY`` on ciphertexts mean nothing.
    Raised while the expression is built, or at the latest when the statement
    is compiled, before anything is sent or logged. ``IS NULL`` / ``IS NOT
    NULL``, ``count(col)`` and selecting the column remain allowed.
    """


class DecryptionError(EnvelopeError):
    """Raised when a stored value cannot be decrypted.

    It was tampered with, it is read under a context other than the one it was
    written with (copied to another column or table), or no key in the keyring can
    unwrap its data key. Deliberately opaque about which check failed.
    """


class MalformedEnvelopeError(DecryptionError):
    """Raised when bytes are not an envelope of a format version this library knows.

    Truncated, garbage, or written by a newer version of the library.
    """


class TenantShreddedError(DecryptionError):
    """Raised for a value, or a write, of a tenant whose branch keys were shredded.

    ``TenantKeyring.shred`` destroyed every version of the tenant's key, so its
    values can never be decrypted again (docs/tenants.md says what that does and
    does not guarantee); a write for that tenant is refused too, rather than
    silently starting a fresh key. Other tenants are untouched. ``tenant`` names
    the tenant (None when a column re-raised it with its own label).
    """

    def __init__(self, message: str, *, tenant: str | None = None) -> None:
        super().__init__(message)
        self.tenant = tenant


class SecretNotFound(EnvelopeError, KeyError):  # noqa: N818 - the name shared/API.md fixes
    """Raised by the credential store for a name (or version) it does not hold."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0]) if self.args else ""


class SecretExists(EnvelopeError):  # noqa: N818 - the name shared/API.md fixes
    """Raised by the credential store for a version that is already stored; nothing changes."""
