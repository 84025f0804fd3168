"""TenantKeyring: a key per tenant, as a hierarchy of branch keys or a keyring per tenant.

The tenant of a value is ``context[field]``: a column declared with
``context_columns=("tenant_id",)`` puts its row's tenant there. No SQL here: the
branch keys come from a BranchKeyStore (sql_store.py for a table of the
application's database).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..aead import DATA_KEY_SIZE, random_bytes
from ..cache import KeyCache
from ..context import EncryptionContext
from ..envelope import WrappedKey, header_end
from ..errors import ConfigurationError, DecryptionError, KeyringError, MalformedEnvelopeError
from ..keyrings.base import DataKey, Keyring, call_keyring
from .branch import BranchKey, ShreddedKey, master_context
from .refs import BranchRef, branch_ref, parse_branch_ref
from .routing import TenantRoutes
from .store import DEFAULT_TABLE, BranchKeyRecord, BranchKeyStore, Exposure

__all__ = ["ShredReport", "TenantKeyring", "shred"]

_RESERVED = ("purpose", "branch_key_version")
_ROTATE_RETRIES = 20
_Key = BranchKey | ShreddedKey
_parse = lru_cache(maxsize=4096)(parse_branch_ref)


@dataclass(frozen=True)
class ShredReport:
    """What ``shred`` destroyed (or, in a dry run, would destroy), and what that makes unreadable.

    ``versions``: the branch key versions that were live. ``exposure``: per table
    of the metadata given, the encrypted columns bound to the tenant and the
    tenant's rows, every one of which can no longer be decrypted.
    """

    tenant: str
    versions: tuple[int, ...]
    exposure: tuple[Exposure, ...]
    dry_run: bool

    def summary(self) -> str:
        verb = "would destroy" if self.dry_run else "destroyed"
        which = ", ".join(map(str, self.versions)) or "none (already shredded, or never keyed)"
        return f"tenant {self.tenant!r}: {verb} branch key versions {which}"


class TenantKeyring:
    """A Keyring with one key per tenant: the tenant is the value's ``context[field]``.

    ``TenantKeyring(master, bind)``: a hierarchy. Each tenant has a 256-bit
    *branch key*, versioned, created on its first write (``create_missing``),
    stored in ``table`` of ``bind`` (an Engine) wrapped by ``master`` (any
    Keyring: KMS typically) under a context naming the tenant and version.
    Unwrapped branch keys are cached for ``cache_ttl`` seconds, each loaded once
    however many threads miss it; a value's own random data key is wrapped
    locally under its tenant's branch key (branch.py), so the master is asked
    once per branch key version per TTL, not once per value. ``store=`` takes
    any BranchKeyStore instead of ``bind``.

    ``TenantKeyring(factory=f)``: each tenant's data keys come from a keyring of
    its own, ``f(tenant)`` (a KMS key per tenant: bring your own key).

    A context without ``field`` raises ConfigurationError: nothing is written
    under a key that is not its tenant's. A value read in a row of another
    tenant raises DecryptionError; of a shredded tenant, TenantShreddedError.
    """

    mode = "tenant"  # the cost mode audit events report

    def __init__(
        self,
        master: Keyring | None = None,
        bind: Any = None,
        *,
        factory: Callable[[str], Keyring] | None = None,
        store: BranchKeyStore | None = None,
        field: str = "tenant_id",
        table: str = DEFAULT_TABLE,
        cache_ttl: float = 300.0,
        cache_size: int = 10_000,
        create_missing: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(field, str) or not field or field in _RESERVED:
            raise ConfigurationError(f"field= names a context key other than {_RESERVED}")
        if not cache_ttl > 0 or cache_size < 1:
            raise ConfigurationError(
                "cache_ttl and cache_size must be positive: without a cache every value "
                "would ask the master keyring"
            )
        self.field = field
        self.create_missing = create_missing
        self._routes: TenantRoutes | None = None
        self._store: BranchKeyStore | None = None
        self.master: Keyring | None = None
        if factory is not None:
            if master is not None or bind is not None or store is not None:
                raise ConfigurationError(
                    "factory= gives each tenant a keyring of its own: pass no master, bind or store"
                )
            self._routes = TenantRoutes(factory)
            # Each tenant's keyring may be a key service: prefetch and keep calls off the loop.
            self.unwraps_remotely = True
        else:
            if not isinstance(master, Keyring):
                raise ConfigurationError("TenantKeyring(master, bind): master is a Keyring")
            if (bind is None) == (store is None):
                raise ConfigurationError("give the branch keys' database as bind= or a store=")
            self.master = master
            self._store = store if store is not None else _sql_store(bind, table)
            # A value's data key unwraps in memory under its cached branch key; the
            # branch keys are single-flighted here, not per value by the Encryptor.
            self.unwraps_in_memory = True
        self._keys: KeyCache[_Key] = KeyCache(cache_size, cache_ttl, clock=clock)
        self._active: KeyCache[_Key] = KeyCache(cache_size, cache_ttl, clock=clock)

    def __repr__(self) -> str:
        if self._routes is not None:
            return f"TenantKeyring(factory=..., field={self.field!r})"
        return f"TenantKeyring(master={self.master!r}, store={self._store!r}, field={self.field!r})"

    @property
    def store(self) -> BranchKeyStore:
        if self._store is None:
            raise ConfigurationError(
                "a TenantKeyring with factory= keeps no branch keys: rotate, shred or move "
                "a tenant's key in the service that holds it"
            )
        return self._store

    def _tenant(self, context: EncryptionContext) -> str:
        tenant = context.get(self.field)
        if tenant == "":
            raise ConfigurationError(
                f"TenantKeyring: the value's {self.field} is empty text, which names no "
                "tenant: give each row a tenant"
            )
        if tenant is None:
            raise ConfigurationError(
                f"TenantKeyring needs the value's tenant, and its encryption context has no "
                f"{self.field!r} (it has {sorted(context)!r}): declare the column with "
                f"EncryptedType(..., context_columns=({self.field!r},))"
            )
        return tenant

    # -- the Keyring protocol --------------------------------------------------

    def generate_data_key(self, context: EncryptionContext) -> DataKey:
        tenant = self._tenant(context)
        if self._routes is not None:
            return self._routes.generate(tenant, context)
        key = self._active.get_or_load(tenant, self._load_active, tenant, True)
        return _new_data_key(key, context)

    def generate_data_key_in_memory(self, context: EncryptionContext) -> DataKey | None:
        """``generate_data_key`` when the tenant's active branch key is cached; else None.

        Then it needs no query and no master call, so under asyncio the Encryptor
        makes it on the event loop instead of paying a thread hop per row; None
        sends it to ``generate_data_key`` off the loop, which loads the key. With
        ``factory=`` each tenant's keyring decides, and that may be a key
        service: None.
        """
        tenant = context.get(self.field)
        if self._routes is not None or not tenant:
            return None  # no tenant: generate_data_key raises the clear error
        key = self._active.get(tenant)
        return None if key is None else _new_data_key(key, context)

    def wrap_data_key(self, data_key: bytes, context: EncryptionContext) -> tuple[WrappedKey, ...]:
        tenant = self._tenant(context)
        if self._routes is not None:
            return self._routes.wrap(tenant, data_key, context)
        key = self._active.get_or_load(tenant, self._load_active, tenant, True)
        return (key.wrap(data_key, context),)

    def unwrap_data_key(
        self, wrapped_keys: Sequence[WrappedKey], context: EncryptionContext
    ) -> bytes:
        tenant = self._tenant(context)
        if self._routes is not None:
            return self._routes.unwrap(tenant, wrapped_keys, context)
        others = []
        for key_ref, blob in wrapped_keys:
            # Cached by key reference: the common case, a hit, parses nothing.
            key = self._keys.get(key_ref)
            if key is None:
                ref = _parse(key_ref)
                if ref is None:
                    continue
                if ref.tenant != tenant:
                    others.append(ref.tenant)
                    continue
                key = self._keys.load(key_ref, self._load_version, ref)
            elif key.tenant != tenant:
                others.append(key.tenant)
                continue
            return key.unwrap(blob, context)
        if others:
            raise DecryptionError(
                f"the value was written for tenant {others[0]!r}, and its row's {self.field} "
                f"is {tenant!r}: values do not move between tenants"
            )
        refs = [key.key_ref for key in wrapped_keys]
        raise DecryptionError(f"no tenant branch key can unwrap the data key: it is under {refs!r}")

    def is_primary(self, wrapped_key: WrappedKey) -> bool:
        """True for a copy under its tenant's active branch key version, as known here."""
        if self._routes is not None:
            return self._routes.is_primary(wrapped_key)
        ref = _parse(wrapped_key.key_ref)
        if ref is None:
            return False
        try:
            key = self._active.get_or_load(ref.tenant, self._load_active, ref.tenant, False)
        except ConfigurationError:  # the tenant has no key at all
            return False
        return isinstance(key, BranchKey) and key.version == ref.version

    def plan_unwraps(
        self, envelopes: Iterable[bytes], context: EncryptionContext
    ) -> Iterator[tuple[bytes, int]]:
        """Of a query's envelopes, one per branch key version not cached yet (Encryptor.unwrap_all).

        Unwrapping it loads its branch key (one master call), so the rows' own
        unwraps then happen in memory; a query over many tenants loads their
        keys concurrently. With ``factory=``, every envelope: each is a call.
        """
        seen: set[bytes] = set()
        for envelope in envelopes:
            if len(envelope) < 4:
                continue  # decrypt() reports it, on its own row
            ref_bytes = envelope[3 : 3 + envelope[2]]
            if ref_bytes in seen and self._routes is None:
                continue
            seen.add(ref_bytes)
            if self._routes is None:
                key_ref = ref_bytes.decode("ascii", "replace")
                if self._keys.peek(key_ref) is not None or _parse(key_ref) is None:
                    continue
            try:
                yield envelope, header_end(envelope)
            except MalformedEnvelopeError:
                continue

    def clear_cache(self) -> None:
        """Forget every branch key held (``Encryptor.clear_cache`` calls it)."""
        self._keys.clear()
        self._active.clear()
        for keyring in self._routes.keyrings() if self._routes is not None else ():
            clear = getattr(keyring, "clear_cache", None)
            if clear is not None:
                clear()

    # -- loading branch keys ---------------------------------------------------

    def _load_active(self, tenant: str, create: bool) -> _Key:
        record = self.store.active(tenant)
        if record is None:
            if not (create and self.create_missing):
                raise ConfigurationError(
                    f"tenant {tenant!r} has no branch key (create_missing=False): "
                    "make it with TenantKeyring.create"
                )
            record = self._new_version(tenant, 1) or self.store.active(tenant)
            if record is None:
                raise KeyringError(f"tenant {tenant!r}'s first branch key vanished once stored")
        if record.wrapped is None:
            return ShreddedKey(tenant, record.version)
        return self._keys.get_or_load(branch_ref(tenant, record.version), self._open, record)

    def _load_version(self, ref: BranchRef) -> _Key:
        record = self.store.version(ref.tenant, ref.version)
        if record is None:
            raise DecryptionError(
                f"tenant {ref.tenant!r} has no branch key version {ref.version} in the "
                "branch key table: the value names a key that was never stored there"
            )
        if record.wrapped is None:
            return ShreddedKey(ref.tenant, ref.version)
        return self._open(record)

    def _open(self, record: BranchKeyRecord) -> BranchKey:
        master = self._master()
        context = master_context(self.field, record.tenant, record.version)
        assert record.wrapped is not None
        key = call_keyring(
            master, "unwrap a branch key", master.unwrap_data_key, record.wrapped, context
        )
        return BranchKey(record.tenant, record.version, key)

    def _master(self) -> Keyring:
        self.store  # noqa: B018 - raises the clear error in factory mode
        assert self.master is not None
        return self.master

    def _new_version(self, tenant: str, version: int) -> BranchKeyRecord | None:
        """Generate and store ``version``; None (and nothing kept) when it exists already."""
        master = self._master()
        context = master_context(self.field, tenant, version)
        made = call_keyring(master, "generate a branch key", master.generate_data_key, context)
        record = BranchKeyRecord(tenant, version, tuple(made.wrapped_keys))
        if not self.store.insert(record):
            return None
        key = BranchKey(tenant, version, made.plaintext)
        self._keys.get_or_load(key.key_ref, lambda: key)
        return record

    # -- managing tenants' keys --------------------------------------------------

    def create(self, tenant: str, *, after_shred: bool = False) -> int:
        """Make sure ``tenant`` has a live branch key; return its active version.

        A shredded tenant gets a new one only with ``after_shred=True``: its old
        values stay unreadable, and new ones are written under the new key.
        Otherwise TenantShreddedError.
        """
        for _ in range(_ROTATE_RETRIES):
            record = self.store.active(tenant)
            if record is not None and record.wrapped is not None:
                return record.version
            if record is not None and not after_shred:
                raise ShreddedKey(tenant, record.version).error()
            version = record.version + 1 if record is not None else 1
            if self._new_version(tenant, version) is not None:
                self._active.discard([tenant])
                return version
        raise KeyringError(f"could not create a branch key for tenant {tenant!r}: too many races")

    def rotate(self, tenant: str) -> int:
        """Make a new active branch key version for ``tenant``; return it.

        New values are written under it (by other processes once their cache
        of the active version expires, within ``cache_ttl``); values under older
        versions still read, and ``rewrap`` moves them, since ``is_primary`` is
        true only for the active version. TenantShreddedError for a shredded tenant.
        """
        for _ in range(_ROTATE_RETRIES):
            record = self.store.active(tenant)
            if record is not None and record.wrapped is None:
                raise ShreddedKey(tenant, record.version).error()
            version = record.version + 1 if record is not None else 1
            if self._new_version(tenant, version) is not None:
                self._active.discard([tenant])
                return version
        raise KeyringError(f"could not rotate tenant {tenant!r}: too many concurrent rotations")

    def rotate_all(self) -> dict[str, int]:
        """``rotate`` every tenant that is not shredded; their new versions."""
        return {tenant: self.rotate(tenant) for tenant in self.tenants()}

    def tenants(self) -> list[str]:
        """The tenants with a live branch key, sorted."""
        top: dict[str, BranchKeyRecord] = {}
        for record in self.store.records():
            top[record.tenant] = record  # by version: the last one is the highest
        return sorted(t for t, record in top.items() if not record.destroyed)

    def shred(
        self, tenant: str, *, dry_run: bool = False, metadata: Any = None, bind: Any = None
    ) -> ShredReport:
        """Destroy every version of ``tenant``'s branch key: crypto-shredding.

        Its values can then never be decrypted here (TenantShreddedError), nor,
        once the branch key table's older copies are gone, from backups of the
        data (docs/tenants.md says exactly what is and is not guaranteed).
        Writes for the tenant are refused from then on, unless ``create(tenant,
        after_shred=True)``. This process forgets the keys at once; others within
        their ``cache_ttl``. With ``dry_run`` nothing changes. With ``metadata``
        (the application's MetaData), the report counts the tenant's rows in each
        table with columns bound to the tenant (``context_columns``), in ``bind``
        (an Engine; by default the branch key table's database).
        """
        report = shred(
            self.store, tenant, field=self.field, dry_run=dry_run, metadata=metadata, bind=bind
        )
        if not dry_run:
            self._active.discard([tenant])
            self._keys.discard([branch_ref(tenant, version) for version in report.versions])
        return report

    def rewrap_tenant_keys(self, to: Keyring) -> int:
        """Move every live branch key under the master keyring ``to``; the number moved.

        One unwrap by the current master and one wrap by ``to`` per branch key
        version, whatever the number of rows. Versions ``to.is_primary`` already
        holds are skipped, so an interrupted run is simply run again. Then build
        the keyring with ``to`` as its master (keep the old key readable by it,
        e.g. ``KmsKeyring(new, decrypt_key_ids=[old])``, until every process has it).
        """
        if not isinstance(to, Keyring):
            raise ConfigurationError("rewrap_tenant_keys(to=) takes a Keyring")
        master, moved = self._master(), 0
        for record in self.store.records():
            if record.wrapped is None:
                continue
            if call_keyring(to, "check a key", to.is_primary, record.wrapped[0]):
                continue
            context = master_context(self.field, record.tenant, record.version)
            key = call_keyring(
                master, "unwrap a branch key", master.unwrap_data_key, record.wrapped, context
            )
            new = call_keyring(to, "wrap a branch key", to.wrap_data_key, key, context)
            if self.store.replace(record.tenant, record.version, record.wrapped, tuple(new)):
                moved += 1
        return moved


def shred(
    store: BranchKeyStore,
    tenant: str,
    *,
    field: str = "tenant_id",
    dry_run: bool = False,
    metadata: Any = None,
    bind: Any = None,
) -> ShredReport:
    """``TenantKeyring.shred`` on a store alone: what the command line runs, needing no keys.

    Forgets nothing cached in this process's keyrings (``TenantKeyring.shred`` does).
    """
    exposure: tuple[Exposure, ...] = ()
    if metadata is not None:
        count = getattr(store, "exposure", None)
        if count is None:
            raise ConfigurationError("this branch key store cannot count rows: no metadata=")
        exposure = tuple(count(metadata, field, tenant, bind))
    if dry_run:
        live = tuple(r.version for r in store.records(tenant) if not r.destroyed)
        return ShredReport(tenant, live, exposure, True)
    return ShredReport(tenant, store.destroy(tenant), exposure, False)


def _sql_store(bind: Any, table: str) -> BranchKeyStore:
    # Imported here: the keyring itself knows no SQL (a store= of another kind needs none).
    from .sql_store import SqlBranchKeyStore

    return SqlBranchKeyStore(bind, table)


def _new_data_key(key: _Key, context: EncryptionContext) -> DataKey:
    """A random data key, wrapped under ``key`` (a shredded tenant's key raises)."""
    data_key = random_bytes(DATA_KEY_SIZE)
    return DataKey(data_key, (key.wrap(data_key, context),))
