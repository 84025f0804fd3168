"""Each tenant's own keyring (bring your own key): ``TenantKeyring(factory=...)``.

``factory(tenant)`` returns the tenant's keyring (a KmsKeyring on the tenant's
own KMS key, typically), made once per tenant and kept. Wrapped copies carry the
tenant in their key reference (``tenant:<tenant>:<inner key ref>``, refs.py), so
a reader, and ``is_primary`` which has no context, know which keyring to ask.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from ..context import EncryptionContext
from ..envelope import WrappedKey
from ..errors import ConfigurationError, DecryptionError
from ..keyrings.base import DataKey, Keyring, call_keyring
from .refs import own_key_ref, parse_own_key_ref

__all__ = ["TenantRoutes"]


class TenantRoutes:
    """The keyrings of tenants, from ``factory``; thread-safe."""

    def __init__(self, factory: Callable[[str], Keyring]) -> None:
        if not callable(factory):
            raise ConfigurationError("factory= takes a function of a tenant returning a Keyring")
        self._factory = factory
        self._keyrings: dict[str, Keyring] = {}
        self._lock = threading.Lock()

    def keyring(self, tenant: str) -> Keyring:
        found = self._keyrings.get(tenant)
        if found is not None:
            return found
        with self._lock:
            found = self._keyrings.get(tenant)
            if found is None:
                found = call_keyring(self, "make a tenant's keyring", self._factory, tenant)
                if not isinstance(found, Keyring):
                    raise ConfigurationError(
                        f"factory({tenant!r}) returned {type(found).__name__}, not a Keyring"
                    )
                self._keyrings[tenant] = found
        return found

    def keyrings(self) -> list[Keyring]:
        return list(self._keyrings.values())

    def _tagged(self, tenant: str, wrapped: Sequence[WrappedKey]) -> tuple[WrappedKey, ...]:
        return tuple(WrappedKey(own_key_ref(tenant, ref), blob) for ref, blob in wrapped)

    def generate(self, tenant: str, context: EncryptionContext) -> DataKey:
        keyring = self.keyring(tenant)
        made = call_keyring(keyring, "generate a data key", keyring.generate_data_key, context)
        return DataKey(made.plaintext, self._tagged(tenant, made.wrapped_keys))

    def wrap(
        self, tenant: str, data_key: bytes, context: EncryptionContext
    ) -> tuple[WrappedKey, ...]:
        keyring = self.keyring(tenant)
        wrapped = call_keyring(keyring, "wrap a data key", keyring.wrap_data_key, data_key, context)
        return self._tagged(tenant, wrapped)

    def unwrap(
        self, tenant: str, wrapped_keys: Sequence[WrappedKey], context: EncryptionContext
    ) -> bytes:
        mine, others = [], []
        for key_ref, blob in wrapped_keys:
            ref = parse_own_key_ref(key_ref)
            if ref is None:
                continue
            if ref.tenant == tenant:
                mine.append(WrappedKey(ref.key_ref, blob))
            else:
                others.append(ref.tenant)
        if not mine:
            if others:
                raise DecryptionError(
                    f"the value was written for tenant {others[0]!r}, not for its row's "
                    f"tenant {tenant!r}: values do not move between tenants"
                )
            refs = [key.key_ref for key in wrapped_keys]
            raise DecryptionError(
                f"no tenant keyring can unwrap the data key: it is under {refs!r}"
            )
        keyring = self.keyring(tenant)
        return call_keyring(keyring, "unwrap a data key", keyring.unwrap_data_key, mine, context)

    def is_primary(self, wrapped_key: WrappedKey) -> bool:
        ref = parse_own_key_ref(wrapped_key.key_ref)
        if ref is None:
            return False
        keyring = self.keyring(ref.tenant)
        return bool(keyring.is_primary(WrappedKey(ref.key_ref, wrapped_key.blob)))
