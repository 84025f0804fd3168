"""One canonical encryption context, computed once and reused for every value.

The same context feeds AES-GCM (as associated data, so a value only decrypts
under the context it was written with) and key services (as the KMS
``EncryptionContext``, so CloudTrail records which table and column a key served).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from .errors import ConfigurationError

__all__ = ["EncryptionContext"]

_MAX_FIELD = 0xFFFF


def _encode_field(text: str, what: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > _MAX_FIELD:
        raise ConfigurationError(f"encryption context {what} is longer than {_MAX_FIELD} bytes")
    return len(data).to_bytes(2, "big") + data


class EncryptionContext(Mapping[str, str]):
    """An immutable str-to-str mapping with its canonical byte encoding.

    Canonical form: a 2-byte big-endian pair count, then each pair sorted by the
    UTF-8 bytes of its key, as ``len(key) key len(value) value`` with 2-byte
    big-endian lengths. Length prefixes make it unambiguous: ``{"a": "bc"}`` and
    ``{"ab": "c"}`` encode differently. Building it once per column keeps the
    per-value hot path free of sorting and encoding.
    """

    __slots__ = ("_items", "canonical")

    _items: dict[str, str]
    canonical: bytes

    def __init__(self, pairs: Mapping[str, str] | None = None) -> None:
        items = dict(pairs or {})
        for key, value in items.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ConfigurationError(
                    "encryption context keys and values must be str, got "
                    f"{type(key).__name__} -> {type(value).__name__}"
                )
        ordered = sorted(items.items(), key=lambda kv: kv[0].encode("utf-8"))
        if len(ordered) > _MAX_FIELD:
            raise ConfigurationError("encryption context has too many pairs")
        parts = [len(ordered).to_bytes(2, "big")]
        for key, value in ordered:
            parts.append(_encode_field(key, "key"))
            parts.append(_encode_field(value, "value"))
        self._items = dict(ordered)
        self.canonical = b"".join(parts)

    @classmethod
    def of(cls, pairs: Mapping[str, str] | None) -> EncryptionContext:
        """Return ``pairs`` itself if it is already canonical, else canonicalize it."""
        if isinstance(pairs, EncryptionContext):
            return pairs
        return cls(pairs)

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        # Mapping.get goes through __getitem__ and a try: this is a dict lookup.
        return self._items.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EncryptionContext):
            return self.canonical == other.canonical
        if isinstance(other, Mapping):
            return self._items == dict(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.canonical)

    def __repr__(self) -> str:
        return f"EncryptionContext({self._items!r})"

    def as_dict(self) -> dict[str, str]:
        """A plain dict copy, as boto3 wants for ``EncryptionContext``."""
        return dict(self._items)


EMPTY_CONTEXT = EncryptionContext()
