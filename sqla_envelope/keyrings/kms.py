"""KmsKeyring: AWS KMS master keys through boto3 (the only importer of boto3/botocore)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, TypeVar, get_args

from ..aead import DATA_KEY_SIZE
from ..context import EncryptionContext
from ..envelope import WrappedKey
from ..errors import ConfigurationError, DecryptionError, KeyringError
from ._kms_errors import kms_failure
from .base import DataKey

if TYPE_CHECKING:
    from boto3.session import Session
    from botocore.config import Config
    from mypy_boto3_kms.client import KMSClient

__all__ = ["KmsKeyring"]

_T = TypeVar("_T")
RetryMode = Literal["standard", "adaptive", "legacy"]
_INSTALL_HINT = "KmsKeyring needs boto3: pip install 'sqla-envelope[kms]'"


def _arn_parts(key_id: str) -> tuple[str, str] | None:
    """(region, resource) of a KMS ARN such as ``arn:aws:kms:eu-west-1:111:key/abc``."""
    parts = key_id.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "kms":
        return None
    return parts[3], parts[5]


def _is_key_arn(key_id: str) -> bool:
    parts = _arn_parts(key_id)
    return parts is not None and parts[1].startswith("key/")


class KmsKeyring:
    """AWS KMS keyring: a fresh data key from KMS for every value ("direct" mode).

    ``key_id`` is a key id, key ARN, alias name (``alias/app``) or alias ARN. New
    data keys come from ``GenerateDataKey`` under it and are also wrapped with
    ``Encrypt`` under each of ``additional_key_ids`` (a key in another region, a
    break-glass key), so any one of them can unwrap. Envelopes store the key ARN
    KMS answers with, so an alias resolves to a concrete key and plain SQL can find
    the rows under a given key. Every request carries the value's encryption context,
    which CloudTrail records; ``Decrypt`` always names the key it expects.

    Building a keyring makes no network call: boto3 clients are created on first
    use, one per region (the region of an ARN, else ``region_name``, else that of
    ``client``, else boto3's default). ``client`` serves the keys of its own region;
    ``session`` (a ``boto3.Session``, for a profile) builds the others, with
    ``endpoint_url`` (a VPC endpoint, a test server) and a botocore ``Config``:

    - ``max_attempts=3``: attempts per request, the first included, with botocore's
      ``retry_mode="standard"`` backoff (throttling and 5xx are retried);
    - ``connect_timeout=2.0`` and ``read_timeout=5.0`` seconds: KMS answers in
      milliseconds, so a call fails after about ``max_attempts * (connect_timeout +
      read_timeout)`` seconds plus backoff rather than holding a database
      transaction open for botocore's default minute;
    - ``max_pool_connections=32``: raise it above the number of threads sharing the
      keyring, or the extra ones open connections that are thrown away.

    A keyring configured with an alias or a bare key id learns its ARN from KMS's
    answers, or, when it reads before it has written, from one ``DescribeKey``; so
    readers need ``kms:DescribeKey`` unless they are given key ARNs. Errors:
    ``DecryptionError`` when KMS says the ciphertext is not for this key or context
    (or no copy is under a key held here); ``KeyringError``, naming the key and the
    AWS error code, for everything else (denied, disabled, throttled past the
    retries, unreachable); ``ConfigurationError`` if boto3 is missing or no region
    can be found.
    """

    def __init__(
        self,
        key_id: str,
        *,
        client: KMSClient | None = None,
        region_name: str | None = None,
        additional_key_ids: Sequence[str] = (),
        grant_tokens: Sequence[str] = (),
        endpoint_url: str | None = None,
        session: Session | None = None,
        max_attempts: int = 3,
        retry_mode: RetryMode = "standard",
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_pool_connections: int = 32,
    ) -> None:
        if isinstance(additional_key_ids, str) or isinstance(grant_tokens, str):
            raise ConfigurationError("additional_key_ids and grant_tokens take a list, not a str")
        ids = (key_id, *additional_key_ids)
        if not all(isinstance(k, str) and k and k.isascii() for k in ids):
            raise ConfigurationError("KMS key ids must be non-empty ASCII strings")
        if len(set(ids)) != len(ids):
            raise ConfigurationError("additional_key_ids repeat a key id")
        if retry_mode not in get_args(RetryMode):
            raise ConfigurationError(f"retry_mode must be one of {get_args(RetryMode)}")
        if max_attempts < 1 or connect_timeout <= 0 or read_timeout <= 0:
            raise ConfigurationError("max_attempts must be >= 1 and the timeouts positive")
        if max_pool_connections < 1:
            raise ConfigurationError("max_pool_connections must be >= 1")
        client_region = client.meta.region_name if client is not None else None
        if client_region and region_name and client_region != region_name:
            raise ConfigurationError(
                f"client is for region {client_region!r} but region_name is {region_name!r}"
            )
        self.key_id = key_id
        self.additional_key_ids = tuple(additional_key_ids)
        self.region_name = region_name or client_region
        self.grant_tokens = tuple(grant_tokens)
        self._endpoint_url = endpoint_url
        self._session = session
        self._client_options = (
            max_attempts,
            retry_mode,
            connect_timeout,
            read_timeout,
            max_pool_connections,
        )
        self._clients: dict[str | None, KMSClient] = {}
        if client is not None:
            self._clients[client_region] = client
        # Configured id -> key ARN: given, or learned from KMS's answers.
        self._arns = {k: k for k in ids if _is_key_arn(k)}
        self._client_lock = threading.Lock()

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The configured key ids, primary first."""
        return (self.key_id, *self.additional_key_ids)

    def __repr__(self) -> str:
        # Key ids and region only: never the clients, which hold credentials.
        return (
            f"KmsKeyring(key_id={self.key_id!r}, "
            f"additional_key_ids={list(self.additional_key_ids)!r}, "
            f"region_name={self.region_name!r})"
        )

    # -- the Keyring protocol --------------------------------------------------

    def generate_data_key(self, context: EncryptionContext) -> DataKey:
        kms = self._client_for(self.key_id)
        response = self._call(
            "GenerateDataKey",
            self.key_id,
            lambda: kms.generate_data_key(
                KeyId=self.key_id,
                KeySpec="AES_256",
                EncryptionContext=context.as_dict(),
                GrantTokens=list(self.grant_tokens),
            ),
        )
        data_key = response["Plaintext"]
        if len(data_key) != DATA_KEY_SIZE:
            raise KeyringError(
                f"KMS GenerateDataKey with key {self.key_id!r} returned a key of "
                f"{len(data_key)} bytes, not {DATA_KEY_SIZE}",
                key_id=self.key_id,
            )
        self._arns[self.key_id] = response["KeyId"]
        primary = WrappedKey(response["KeyId"], response["CiphertextBlob"])
        extra = [self._encrypt(k, data_key, context) for k in self.additional_key_ids]
        return DataKey(data_key, (primary, *extra))

    def wrap_data_key(self, data_key: bytes, context: EncryptionContext) -> tuple[WrappedKey, ...]:
        if not isinstance(data_key, bytes) or len(data_key) != DATA_KEY_SIZE:
            raise ConfigurationError(f"a data key is {DATA_KEY_SIZE} bytes")
        return tuple(self._encrypt(k, data_key, context) for k in self.key_ids)

    def unwrap_data_key(
        self, wrapped_keys: Sequence[WrappedKey], context: EncryptionContext
    ) -> bytes:
        chosen = self._choose(wrapped_keys)
        if chosen is None:
            refs = [key.key_ref for key in wrapped_keys]
            held = [self._arns.get(k, k) for k in self.key_ids]
            raise DecryptionError(
                f"no key in this keyring can unwrap the data key: the value is under "
                f"{refs!r}, the keyring holds {held!r}"
            )
        key_ref, blob = chosen
        kms = self._client_for(key_ref)
        response = self._call(
            "Decrypt",
            key_ref,
            lambda: kms.decrypt(
                CiphertextBlob=blob,
                KeyId=key_ref,
                EncryptionContext=context.as_dict(),
                GrantTokens=list(self.grant_tokens),
            ),
        )
        data_key = response["Plaintext"]
        if len(data_key) != DATA_KEY_SIZE:
            raise DecryptionError(f"the value under {key_ref!r} does not hold a data key")
        return data_key

    def is_primary(self, wrapped_key: WrappedKey) -> bool:
        key_ref = wrapped_key.key_ref
        return key_ref == self.key_id or key_ref == self._resolve(self.key_id)

    # -- KMS calls -------------------------------------------------------------

    def _encrypt(self, key_id: str, data_key: bytes, context: EncryptionContext) -> WrappedKey:
        kms = self._client_for(key_id)
        response = self._call(
            "Encrypt",
            key_id,
            lambda: kms.encrypt(
                KeyId=key_id,
                Plaintext=data_key,
                EncryptionContext=context.as_dict(),
                GrantTokens=list(self.grant_tokens),
            ),
        )
        self._arns[key_id] = response["KeyId"]
        return WrappedKey(response["KeyId"], response["CiphertextBlob"])

    def _choose(self, wrapped_keys: Sequence[WrappedKey]) -> WrappedKey | None:
        """The copy under the first held key that has one, primary first.

        In key order even when a later key is known and an earlier one needs a
        DescribeKey: a reader must use its own region's key, not a replica far away.
        Chosen by key reference only: Decrypt is never tried under several keys.
        """
        for held in self.key_ids:
            arn = self._resolve(held)
            for wrapped in wrapped_keys:
                if wrapped.key_ref in (held, arn):
                    return wrapped
        return None

    def _resolve(self, key_id: str) -> str:
        """The key ARN behind ``key_id``, asking DescribeKey once if no answer taught it."""
        arn = self._arns.get(key_id)
        if arn is not None:
            return arn
        # No lock: threads starting cold may each ask once, but while KMS is down
        # they must not queue behind one another's timeouts.
        kms = self._client_for(key_id)
        response = self._call(
            "DescribeKey",
            key_id,
            lambda: kms.describe_key(KeyId=key_id, GrantTokens=list(self.grant_tokens)),
        )
        arn = response["KeyMetadata"].get("Arn") or key_id
        self._arns[key_id] = arn
        return arn

    def _call(self, operation: str, key_id: str, call: Callable[[], _T]) -> _T:
        try:
            return call()
        except Exception as exc:
            raise kms_failure(exc, operation, key_id).chain(exc) from exc

    # -- clients -----------------------------------------------------------------

    def _client_for(self, key_id: str) -> KMSClient:
        """The client for ``key_id``'s region, created on first use (thread-safe)."""
        parts = _arn_parts(key_id)
        region = parts[0] if parts is not None else self.region_name
        kms = self._clients.get(region)
        if kms is not None:
            return kms
        with self._client_lock:
            kms = self._clients.get(region)
            if kms is None:
                kms = self._new_client(region, key_id)
                self._clients[region] = kms
        return kms

    def _new_client(self, region: str | None, key_id: str) -> KMSClient:
        try:
            import boto3
            from botocore.exceptions import NoRegionError
        except ImportError:
            raise ConfigurationError(_INSTALL_HINT) from None
        if self._session is None:
            # A private session: boto3's default one is not safe to share across threads.
            self._session = boto3.session.Session()
        try:
            return self._session.client(
                "kms", region_name=region, endpoint_url=self._endpoint_url, config=self._config()
            )
        except NoRegionError:
            raise ConfigurationError(
                f"no AWS region for KMS key {key_id!r}: pass region_name= or a key ARN"
            ) from None

    def _config(self) -> Config:
        from botocore.config import Config

        attempts, mode, connect, read, pool = self._client_options
        return Config(
            retries={"mode": mode, "total_max_attempts": attempts},
            connect_timeout=connect,
            read_timeout=read,
            max_pool_connections=pool,
        )
