"""What a failed KMS call means for the caller: DecryptionError or KeyringError."""

from __future__ import annotations

import random
from collections.abc import Callable

from ..errors import DecryptionError, EnvelopeError, KeyringError

__all__ = ["backoff", "is_transient", "kms_failure"]

# KMS's ways of saying "this ciphertext is not for this key or context": the
# value cannot be decrypted, which is not an outage.
NOT_FOR_THIS_KEY = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})
# Answers that mean "not now": worth another attempt after a pause. Everything
# else (denied, disabled, not found, invalid state, bad grant, bad credentials)
# stays the same however often it is asked, and is raised at once.
_TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "LimitExceededException",
        "KMSInternalException",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "DependencyTimeoutException",
        "KeyUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
# botocore's connection and timeout errors, by class name: this module never
# imports botocore. (EndpointConnectionError and ConnectTimeoutError derive from
# its ConnectionError, ReadTimeoutError and ConnectionClosedError from
# HTTPClientError.)
_TRANSIENT_CLASSES = frozenset({"ConnectionError", "HTTPClientError", "TimeoutError"})
_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 2.0


def is_transient(exc: BaseException) -> bool:
    """Whether a failed KMS call may succeed if made again: throttled, 5xx, unreachable."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error")
        code = str(error.get("Code") or "") if isinstance(error, dict) else ""
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
        return code in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500)
    return any(cls.__name__ in _TRANSIENT_CLASSES for cls in type(exc).__mro__)


def backoff(attempt: int, uniform: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to wait before attempt ``attempt + 1``: exponential backoff with full jitter.

    As AWS's Architecture Blog, "Exponential Backoff And Jitter" (2015), advises:
    a uniform draw between 0 and min(cap, base * 2**attempt), so that many clients
    throttled together do not come back together.
    """
    return uniform(0.0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt))


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
