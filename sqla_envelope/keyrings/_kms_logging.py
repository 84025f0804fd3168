"""Keeps the data keys KMS returns out of botocore's DEBUG logs.

With DEBUG logging on (a common setting while chasing a problem), botocore logs
every response body (``botocore.parsers``: the ``Plaintext`` of GenerateDataKey
and Decrypt, a data key in base64) and every request (``botocore.endpoint``: the
``Plaintext`` an Encrypt sends). A filter on those two loggers replaces the
value of every ``"Plaintext"`` field with ``<redacted>`` before any handler sees
the record. It is installed once per process, when a KmsKeyring is built, and
costs nothing while those loggers are not enabled for DEBUG (a filter only runs
for records that are created).
"""

from __future__ import annotations

import logging
import re

__all__ = ["redact_plaintext_in_botocore_logs"]

_LOGGERS = ("botocore.endpoint", "botocore.parsers")
_PLAINTEXT = re.compile(r'("Plaintext"\s*:\s*")[^"]*')


class _RedactPlaintext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Plaintext" in message:
            record.msg, record.args = _PLAINTEXT.sub(r"\1<redacted>", message), None
        return True


_FILTER = _RedactPlaintext()


def redact_plaintext_in_botocore_logs() -> None:
    """Install the filter on botocore's request and response loggers (idempotent)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
