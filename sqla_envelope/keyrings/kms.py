"""KmsKeyring: AWS KMS master keys through boto3 (the only importer of boto3/botocore)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..context import EncryptionContext
from ..envelope import WrappedKey
from .base import DataKey

__all__ = ["KmsKeyring"]


class KmsKeyring:
    """AWS KMS keyring; construction makes no network call.

    Full behaviour lands with issue 3; until then every key operation raises
    NotImplementedError, so nothing is ever stored unencrypted.
    """

    def __init__(
        self,
        key_id: str,
        *,
        client: Any = None,
        region_name: str | None = None,
        additional_key_ids: Sequence[str] = (),
    ) -> None:
        self.key_id = key_id
        self.additional_key_ids = tuple(additional_key_ids)
        self._client = client
        self._region_name = region_name

    def __repr__(self) -> str:
        extra = list(self.additional_key_ids)
        return f"KmsKeyring(key_id={self.key_id!r}, additional_key_ids={extra!r})"

    def generate_data_key(self, context: EncryptionContext) -> DataKey:
        raise NotImplementedError("KmsKeyring lands with issue 3")

    def wrap_data_key(self, data_key: bytes, context: EncryptionContext) -> tuple[WrappedKey, ...]:
        raise NotImplementedError("KmsKeyring lands with issue 3")

    def unwrap_data_key(
        self, wrapped_keys: Sequence[WrappedKey], context: EncryptionContext
    ) -> bytes:
        raise NotImplementedError("KmsKeyring lands with issue 3")

    def is_primary(self, wrapped_key: WrappedKey) -> bool:
        raise NotImplementedError("KmsKeyring lands with issue 3")
