"""Reading a credstash item kept as credstash wrote it: KMS unwraps its key, then its format.

A store keeps imported credstash items verbatim until they are converted
(``SecretStore.reencrypt``). Reading one is what credstash's ``get`` does: a KMS
``Decrypt`` of its 64-byte data key under the caller's context, then the HMAC
check and AES-CTR of credstash_format.py; except that the Decrypt names the key
the item was imported under and must be one the keyring holds. Knows no
SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import DecryptionError
from ..keyrings.base import Keyring
from .credstash_format import CredstashItem, open_contents

__all__ = ["open_item"]


def open_item(keyring: Keyring, item: CredstashItem, context: Mapping[str, str]) -> str:
    """The value of ``item``: ``keyring`` (a KmsKeyring) unwraps its key under ``context``.

    DecryptionError when the keyring is not a KMS keyring or does not hold the
    item's key, KMS refuses the context, the HMAC does not match (the item was
    altered: nothing is decrypted then), or the value is not UTF-8; KeyringError
    when KMS cannot be reached. No error holds the value or the key.
    """
    decrypt_blob = getattr(keyring, "decrypt_blob", None)
    if decrypt_blob is None:
        raise DecryptionError(
            f"it is a credstash item, whose data key only AWS KMS unwraps: read it with a "
            f"KmsKeyring that holds {item.kms_key_id!r}"
        )
    data_key = decrypt_blob(item.key_blob, context, item.kms_key_id)
    plaintext = open_contents(data_key, item.contents, item.hmac, item.digest)
    text = _text(plaintext)
    if text is None:
        # Raised here, not inside the except: a UnicodeDecodeError holds the bytes.
        raise DecryptionError("the credstash item's value is not UTF-8 text")
    return text


def _text(plaintext: bytes) -> str | None:
    try:
        return plaintext.decode("utf-8")  # credstash stores UTF-8 text only
    except UnicodeDecodeError:
        return None
