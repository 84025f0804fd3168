"""KmsKeyring: AWS KMS master keys through boto3 (clients live in _kms_clients.py)."""

from __future__ import annotations

import contextlib
import os
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

from ..aead import DATA_KEY_SIZE, LOCAL_WRAPPED_SIZE, LocalKeyWrapper, random_bytes
from ..context import EncryptionContext
from ..envelope import WrappedKey, copies_end, header_end, wrapped_keys_of
from ..errors import ConfigurationError, DecryptionError, KeyringError, MalformedEnvelopeError
from ._kms_blob import direct_blob, is_reuse, parse_blob, reuse_blob
from ._kms_clients import KmsClients, RetryMode, is_key_arn
from ._kms_errors import backoff, is_transient, kms_failure
from ._kms_logging import redact_plaintext_in_botocore_logs
from ._kms_pool import DataKeyPool
from ._kms_reuse import ReuseKeys, WrappingKey
from .base import DataKey

if TYPE_CHECKING:
    from boto3.session import Session
    from mypy_boto3_kms.client import KMSClient

__all__ = ["KmsKeyring"]

CostMode = Literal["direct", "bounded_reuse"]


class KmsKeyring:
    """AWS KMS keyring: ``mode="direct"`` (a KMS data key per value) or ``"bounded_reuse"``.

    In bounded reuse, a KMS-generated wrapping key per context wraps at most
    ``max_rows`` values for at most ``max_age`` seconds; every value still has its
    own random data key, wrapped locally with AES-SIV. Both modes read both
    (docs/kms.md compares their cost and blast radius). In direct mode, multi-row
    writes reserve their data keys and up to ``prefetch`` GenerateDataKey calls run
    ahead on ``prefetch_workers`` threads. ``decrypt_key_ids`` are keys that only
    unwrap (an alias's previous key after rotation); ``close()`` stops the workers.

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

    - ``max_attempts=8`` and ``retry_budget=10.0``: a request that fails for a
      passing reason (throttled, a 5xx answer, a timeout or a refused connection)
      is made again after an exponential backoff with full jitter, up to
      ``max_attempts`` attempts in all, the first included, and no new attempt
      starts ``retry_budget`` seconds after the first; on every path, writes,
      reads and rotation alike. A permanent answer (denied, disabled, not found,
      invalid state) is raised at once, with no further request. botocore itself
      is set to one attempt, so its retries do not multiply these; ``retry_mode``
      still chooses its client-side rate limiting (``"adaptive"``);
    - ``connect_timeout=2.0`` and ``read_timeout=5.0`` seconds: KMS answers in
      milliseconds, so a call fails within about ``retry_budget +
      connect_timeout + read_timeout`` seconds rather than holding a database
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
        decrypt_key_ids: Sequence[str] = (),
        grant_tokens: Sequence[str] = (),
        endpoint_url: str | None = None,
        session: Session | None = None,
        max_attempts: int = 8,
        retry_budget: float = 10.0,
        retry_mode: RetryMode = "standard",
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_pool_connections: int = 32,
        mode: CostMode = "direct",
        max_rows: int = 1000,
        max_age: float = 300.0,
        prefetch: int = 32,
        prefetch_workers: int = 16,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if any(isinstance(v, str) for v in (additional_key_ids, decrypt_key_ids, grant_tokens)):
            raise ConfigurationError(
                "additional_key_ids, decrypt_key_ids and grant_tokens take a list, not a str"
            )
        ids = (key_id, *additional_key_ids, *decrypt_key_ids)
        if not all(isinstance(k, str) and k and k.isascii() for k in ids):
            raise ConfigurationError("KMS key ids must be non-empty ASCII strings")
        if len(set(ids)) != len(ids):
            raise ConfigurationError("additional_key_ids repeat a key id")
        if mode not in get_args(CostMode):
            raise ConfigurationError(f"mode must be one of {get_args(CostMode)}")
        if max_rows < 1 or max_age <= 0:
            raise ConfigurationError("max_rows must be >= 1 and max_age positive")
        if prefetch < 0 or prefetch_workers < 1:
            raise ConfigurationError("prefetch must be >= 0 and prefetch_workers >= 1")
        if max_attempts < 1 or retry_budget < 0:
            raise ConfigurationError("max_attempts must be >= 1 and retry_budget not negative")
        self.max_attempts = max_attempts
        self.retry_budget = float(retry_budget)
        self.key_id = key_id
        self.additional_key_ids = tuple(additional_key_ids)
        self.decrypt_key_ids = tuple(decrypt_key_ids)
        self.grant_tokens = tuple(grant_tokens)
        # Sent only when there are some: an empty list still costs serialization.
        self._grants: dict[str, Any] = {"GrantTokens": list(grant_tokens)} if grant_tokens else {}
        self._clients = KmsClients(
            client=client,
            region_name=region_name,
            endpoint_url=endpoint_url,
            session=session,
            max_attempts=1,  # retried here, with the budget (see _request)
            retry_mode=retry_mode,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
        )
        self.region_name = self._clients.region_name
        # Configured id -> key ARN: given, or learned from KMS's answers.
        self._arns = {k: k for k in ids if is_key_arn(k)}
        self.mode = mode
        # Unwrapping waits on the network in direct mode (a Decrypt per value), so
        # rewrap runs many workers; bounded reuse unwraps locally once its
        # wrapping key is known (its read prefetch is plan_unwraps' business).
        self.unwraps_remotely = mode == "direct"
        # Bounded reuse unwraps each value in memory under a cached wrapping key, and
        # fetches each wrapping key once however many threads ask (single flight of
        # its own): the Encryptor's single flight per value would only add a lock.
        self.unwraps_in_memory = mode == "bounded_reuse"
        self.max_rows = max_rows
        self.max_age = float(max_age)
        self._clock = clock
        # bounded reuse: wrapping keys for writing (made ahead for batches) and reading
        self._reuse = ReuseKeys(
            self._new_wrapping_key,
            self._decrypt,
            max_rows=max_rows,
            max_age=self.max_age,
            workers=prefetch_workers,
            clock=clock,
        )
        _KEYRINGS.add(self)
        redact_plaintext_in_botocore_logs()
        # direct mode, writing: data keys generated ahead by worker threads
        self._pool = (
            DataKeyPool(self._generate_direct, size=prefetch, workers=prefetch_workers, clock=clock)
            if mode == "direct" and prefetch > 0
            else None
        )

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The key ids new data keys are wrapped under, primary first."""
        return (self.key_id, *self.additional_key_ids)

    @property
    def readable_key_ids(self) -> tuple[str, ...]:
        """Every key this keyring unwraps with, in the order it prefers them."""
        return (*self.key_ids, *self.decrypt_key_ids)

    def __repr__(self) -> str:
        # Key ids and region only: never the clients, which hold credentials.
        return (
            f"KmsKeyring(key_id={self.key_id!r}, "
            f"additional_key_ids={list(self.additional_key_ids)!r}, "
            f"decrypt_key_ids={list(self.decrypt_key_ids)!r}, "
            f"region_name={self.region_name!r}, mode={self.mode!r})"
        )

    # -- the Keyring protocol --------------------------------------------------

    def generate_data_key(self, context: EncryptionContext) -> DataKey:
        if self.mode == "bounded_reuse":
            data_key = random_bytes(DATA_KEY_SIZE)
            return DataKey(data_key, self._wrap_locally(data_key, context))
        if self._pool is not None:
            return self._pool.take(context)
        return self._generate_direct(context)

    def generate_data_key_in_memory(self, context: EncryptionContext) -> DataKey | None:
        """In bounded reuse, ``generate_data_key`` if a wrapping key is at hand; else None.

        Then no KMS call is needed, and under asyncio the Encryptor wraps on the
        event loop instead of paying a thread hop (about 80 us) per value; None,
        and always in direct mode, sends the call off the loop.
        """
        if self.mode != "bounded_reuse":
            return None
        wrapping = self._reuse.current_if_ready(context)
        if wrapping is None:
            return None
        data_key = random_bytes(DATA_KEY_SIZE)
        return DataKey(data_key, _wrapped_under(wrapping, data_key, context))

    def reserve_data_keys(self, context: EncryptionContext, count: int) -> None:
        """Start generating ``count`` data keys ahead, for a statement about to write them.

        Called by the Encryptor before a multi-row INSERT or UPDATE; in direct mode
        with ``prefetch`` > 0 the keys come from up to ``prefetch`` concurrent
        GenerateDataKey calls, so the rows do not wait one KMS round trip each. In
        bounded reuse, the wrapping keys the rows will use up are generated now,
        concurrently (at most ``prefetch_workers``); the calls are the same ones
        writing the rows would make.
        """
        if self.mode == "bounded_reuse":
            self._reuse.reserve(context, count)
        elif self._pool is not None:
            self._pool.reserve(context, count)

    def plan_unwraps(
        self, envelopes: Iterable[bytes], context: EncryptionContext
    ) -> Iterator[tuple[bytes, int]]:
        """Of a query's envelopes, the ones to unwrap ahead, each with its header size.

        Used by ``Encryptor.unwrap_all`` to make, concurrently, every KMS call a
        batch of rows needs, and no more; yielded as found, so the first requests
        are in flight while the rest of the rows are scanned. Decided per stored
        copy, not by this keyring's mode, since either mode reads both: a
        direct-mode copy is a Decrypt of its own; for bounded-reuse copies, one
        envelope per wrapping key not yet unwrapped here, the rest unwrapping
        locally when their rows are decrypted. Rows written together share a
        wrapping key and sit together, so a row that starts with the previous
        one-copy row's header up to its local wrap (the bytes that name the
        wrapping key, their lengths included) is passed over unparsed.
        """
        needs: set[Hashable] = set()
        same_as_last: bytes | None = None
        for envelope in envelopes:
            if same_as_last is not None and envelope.startswith(same_as_last):
                continue
            same_as_last = None
            try:
                end = header_end(envelope)
                wrapped_keys = wrapped_keys_of(envelope, end)
            except MalformedEnvelopeError:
                continue  # decrypt() reports it, on its own row
            candidates = self._candidates(wrapped_keys)
            if not candidates:
                continue
            key_ref, blob = candidates[0]
            need: Hashable | None = (key_ref, blob)
            if is_reuse(blob):
                need = self._reuse.group(key_ref, blob, context)
                if len(wrapped_keys) == 1 and len(blob) > LOCAL_WRAPPED_SIZE:
                    same_as_last = envelope[: copies_end(envelope, end) - LOCAL_WRAPPED_SIZE]
            if need is not None and need not in needs:
                needs.add(need)
                yield envelope, end

    def clear_cache(self) -> None:
        """Forget the bounded-reuse wrapping keys held in memory (``Encryptor.clear_cache``)."""
        self._reuse.clear()

    def close(self) -> None:
        """Stop the prefetch workers and forget pooled data keys; the keyring still works."""
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> KmsKeyring:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _generate_direct(self, context: EncryptionContext) -> DataKey:
        data_key, copies = self._generate_copies(context)
        return DataKey(data_key, tuple(WrappedKey(arn, direct_blob(c)) for arn, c in copies))

    def wrap_data_key(self, data_key: bytes, context: EncryptionContext) -> tuple[WrappedKey, ...]:
        if not isinstance(data_key, bytes) or len(data_key) != DATA_KEY_SIZE:
            raise ConfigurationError(f"a data key is {DATA_KEY_SIZE} bytes")
        if self.mode == "bounded_reuse":
            return self._wrap_locally(data_key, context)
        copies = [self._encrypt(k, data_key, context) for k in self.key_ids]
        return tuple(WrappedKey(arn, direct_blob(c)) for arn, c in copies)

    def unwrap_data_key(
        self, wrapped_keys: Sequence[WrappedKey], context: EncryptionContext
    ) -> bytes:
        """Unwrap the copy under the first key held, falling over to the next on an outage.

        Copies are chosen by key reference, in the keyring's order (primary,
        additional, decrypt-only), never by trial decryption. A KeyringError (a
        region down, throttling) moves on to the next held copy of the same data
        key; a DecryptionError (altered, wrong context) stops at once.
        """
        # The bounded-reuse read path, once per value: a copy under the wrapping key
        # read last (only ever one under a key held here) unwraps locally at once.
        canonical = context.canonical
        for key_ref, blob in wrapped_keys:
            data_key = self._reuse.unwrap_known(key_ref, blob, canonical)
            if data_key is not None:
                return data_key
        if len(wrapped_keys) == 1:
            key_ref, blob = wrapped_keys[0]
            if is_reuse(blob) and key_ref in (self.key_id, self._arns.get(self.key_id)):
                return self._reuse.unwrap(key_ref, blob, context)
        first_error: KeyringError | None = None
        for key_ref, blob in self._candidates(wrapped_keys):
            try:
                return self._unwrap_copy(key_ref, blob, context)
            except KeyringError as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        refs = [key.key_ref for key in wrapped_keys]
        held = [self._arns.get(k, k) for k in self.readable_key_ids]
        raise DecryptionError(
            f"no key in this keyring can unwrap the data key: the value is under "
            f"{refs!r}, the keyring holds {held!r}"
        )

    def _unwrap_copy(self, key_ref: str, blob: bytes, context: EncryptionContext) -> bytes:
        if is_reuse(blob):
            # Bounded reuse: one KMS Decrypt per wrapping key, then a local unwrap.
            return self._reuse.unwrap(key_ref, blob, context)
        return self._decrypt(key_ref, parse_blob(blob).kms_ciphertext, context)

    def is_primary(self, wrapped_key: WrappedKey) -> bool:
        key_ref = wrapped_key.key_ref
        return key_ref == self.key_id or key_ref == self._resolve(self.key_id)

    # -- bounded reuse -----------------------------------------------------------

    def _wrap_locally(self, data_key: bytes, context: EncryptionContext) -> tuple[WrappedKey, ...]:
        return _wrapped_under(self._reuse.current(context), data_key, context)

    def _new_wrapping_key(self, context: EncryptionContext) -> WrappingKey:
        plaintext, copies = self._generate_copies(context)
        return WrappingKey(LocalKeyWrapper(plaintext), tuple(copies), self._clock() + self.max_age)

    # -- KMS calls -------------------------------------------------------------

    def _generate_copies(self, context: EncryptionContext) -> tuple[bytes, list[tuple[str, bytes]]]:
        """A new data key from GenerateDataKey, and its KMS ciphertext under every key.

        Primary first, then an Encrypt per additional key: (key ARN, ciphertext).
        """
        response = self._request(
            "GenerateDataKey",
            self.key_id,
            KeyId=self.key_id,
            KeySpec="AES_256",
            EncryptionContext=context.as_dict(),
        )
        data_key = response["Plaintext"]
        if len(data_key) != DATA_KEY_SIZE:
            raise KeyringError(
                f"KMS GenerateDataKey with key {self.key_id!r} returned a key of "
                f"{len(data_key)} bytes, not {DATA_KEY_SIZE}",
                key_id=self.key_id,
            )
        self._arns[self.key_id] = response["KeyId"]
        copies = [(response["KeyId"], response["CiphertextBlob"])]
        copies += [self._encrypt(k, data_key, context) for k in self.additional_key_ids]
        return data_key, copies

    def _decrypt(self, key_ref: str, kms_ciphertext: bytes, context: EncryptionContext) -> bytes:
        response = self._request(
            "Decrypt",
            key_ref,
            CiphertextBlob=kms_ciphertext,
            KeyId=key_ref,
            EncryptionContext=context.as_dict(),
        )
        data_key = response["Plaintext"]
        if len(data_key) != DATA_KEY_SIZE:
            raise DecryptionError(f"the value under {key_ref!r} does not hold a data key")
        return data_key  # type: ignore[no-any-return]

    def decrypt_blob(
        self, ciphertext_blob: bytes, context: Mapping[str, str], key_id: str | None = None
    ) -> bytes:
        """A KMS ``Decrypt`` of a ciphertext another tool wrote (credstash's 64-byte keys).

        Under ``key_id``, one of the keys this keyring reads with (by default its
        primary key; ``KeyId`` names it, as every Decrypt here does), with its
        retries; the plaintext may be of any size. DecryptionError when the key is
        not held here or KMS refuses the ciphertext or the context, KeyringError
        for the service.
        """
        key_id = key_id or self.key_id
        if key_id not in self.readable_key_ids:
            raise DecryptionError(
                f"the ciphertext is under KMS key {key_id!r}, which this keyring does not "
                f"hold (it holds {list(self.readable_key_ids)!r}; decrypt_key_ids adds one)"
            )
        response = self._request(
            "Decrypt",
            key_id,
            CiphertextBlob=ciphertext_blob,
            KeyId=key_id,
            EncryptionContext=dict(context),
        )
        return response["Plaintext"]  # type: ignore[no-any-return]

    def generate_blob(self, context: Mapping[str, str], size: int) -> tuple[bytes, bytes]:
        """(plaintext, KMS ciphertext) of a new data key of ``size`` bytes, for another tool.

        What credstash asks KMS for (64 bytes: an AES key and an HMAC key), so that
        ``export-credstash`` writes items credstash itself reads.
        """
        response = self._request(
            "GenerateDataKey",
            self.key_id,
            KeyId=self.key_id,
            NumberOfBytes=size,
            EncryptionContext=dict(context),
        )
        return response["Plaintext"], response["CiphertextBlob"]

    def _encrypt(
        self, key_id: str, data_key: bytes, context: EncryptionContext
    ) -> tuple[str, bytes]:
        """(key ARN, KMS ciphertext) of ``data_key`` under ``key_id``."""
        response = self._request(
            "Encrypt",
            key_id,
            KeyId=key_id,
            Plaintext=data_key,
            EncryptionContext=context.as_dict(),
        )
        self._arns[key_id] = response["KeyId"]
        return response["KeyId"], response["CiphertextBlob"]

    def _candidates(self, wrapped_keys: Sequence[WrappedKey]) -> list[WrappedKey]:
        """The copies under keys held here, in the keyring's order of preference.

        In key order even when a later key is known and an earlier one needs a
        DescribeKey: a reader must use its own region's key, not a replica far
        away. A key whose alias cannot be resolved now (its region is down) is
        passed over, so its replica can still serve.
        """
        primary = self._arns.get(self.key_id)
        # The common case, on the read path of every value: one copy, under ours.
        if len(wrapped_keys) == 1 and wrapped_keys[0].key_ref in (primary, self.key_id):
            return list(wrapped_keys)
        found: list[WrappedKey] = []
        for held in self.readable_key_ids:
            names = {held}
            with contextlib.suppress(KeyringError):  # unresolvable now: try the rest
                names.add(self._resolve(held))
            found.extend(w for w in wrapped_keys if w.key_ref in names and w not in found)
        return found

    def _resolve(self, key_id: str) -> str:
        """The key ARN behind ``key_id``, asking DescribeKey once if no answer taught it."""
        arn = self._arns.get(key_id)
        if arn is not None:
            return arn
        # No lock: threads starting cold may each ask once, but while KMS is down
        # they must not queue behind one another's timeouts.
        response = self._request("DescribeKey", key_id, KeyId=key_id)
        arn = response["KeyMetadata"].get("Arn") or key_id
        self._arns[key_id] = arn
        return arn

    def _request(
        self, operation: str, key_id: str, *, client_for: str | None = None, **params: Any
    ) -> Any:
        """One KMS request, with the grant tokens; any failure as our error naming ``key_id``.

        Sent by the client of ``client_for``'s region (by default ``key_id``'s). A
        transient failure is tried again within ``max_attempts`` and
        ``retry_budget`` (class docstring); anything else is raised at once.
        """
        method = getattr(self._clients.for_key(client_for or key_id), _METHODS[operation])
        deadline = 0.0
        for attempt in range(self.max_attempts):
            try:
                return method(**params, **self._grants)
            except Exception as exc:
                now = time.monotonic()
                deadline = deadline or now + self.retry_budget
                last = attempt + 1 >= self.max_attempts or now >= deadline
                if last or not is_transient(exc):
                    raise kms_failure(exc, operation, key_id).chain(exc) from exc
            time.sleep(min(backoff(attempt), max(0.0, deadline - now)))
        raise AssertionError("unreachable: the last attempt returns or raises")


_METHODS = {
    "GenerateDataKey": "generate_data_key",
    "Decrypt": "decrypt",
    "Encrypt": "encrypt",
    "DescribeKey": "describe_key",
}

_KEYRINGS: weakref.WeakSet[KmsKeyring] = weakref.WeakSet()


def _reset_in_child() -> None:
    """After os.fork(): the child must not share wrapping keys or connections.

    A wrapping key shared by parent and child would serve up to twice max_rows
    values, and boto3's connection pools are not safe across a fork. Clients the
    user passed in are kept; the ones the keyring built are rebuilt on first use.
    The rest resets itself: the data keys generated ahead and their workers
    (_kms_pool.py), and the wrapping keys being decrypted for reading (cache.py).
    """
    for keyring in list(_KEYRINGS):
        keyring._reuse.reset()
        keyring._clients.reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)


def _wrapped_under(
    wrapping: WrappingKey, data_key: bytes, context: EncryptionContext
) -> tuple[WrappedKey, ...]:
    """``data_key`` wrapped locally under a bounded-reuse wrapping key, one copy per KMS key."""
    local_wrap = wrapping.wrapper.wrap(data_key, context.canonical)
    return tuple(WrappedKey(arn, reuse_blob(kms, local_wrap)) for arn, kms in wrapping.copies)
