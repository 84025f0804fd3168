"""What a failed KMS call means for the caller: DecryptionError or KeyringError."""

from __future__ import annotations

from ..errors import DecryptionError, EnvelopeError, KeyringError

__all__ = ["kms_failure"]

# KMS's ways of saying "this ciphertext is not for this key or context": the
# value cannot be decrypted, which is not an outage.
NOT_FOR_THIS_KEY = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})


def kms_failure(exc: Exception, operation: str, key_id: str) -> EnvelopeError:
    """Translate an exception from a KMS call into DecryptionError or KeyringError.

    A botocore ``ClientError`` is recognized by its ``response`` (AWS's error code
    and message), so this module never imports botocore and works with any client.
    Only AWS's error code and message are quoted (they never hold key material);
    for a client-side error only its type, since botocore's parameter validation
    messages can echo request values. The full error stays chained as the cause.
    """
    response = getattr(exc, "response", None)
    error = response.get("Error") if isinstance(response, dict) else None
    if not isinstance(error, dict):
        return KeyringError(
            f"KMS {operation} with key {key_id!r} failed: {type(exc).__name__}", key_id=key_id
        )
    code = str(error.get("Code") or "UnknownError")
    message = str(error.get("Message") or "")[:300]
    detail = f"{code}: {message}" if message else code
    if code in NOT_FOR_THIS_KEY:
        return DecryptionError(f"KMS could not decrypt the data key under {key_id!r}: {code}")
    return KeyringError(f"KMS {operation} with key {key_id!r} failed: {detail}", key_id=key_id)
