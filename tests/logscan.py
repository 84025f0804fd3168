"""A pytest plugin: no plaintext or key ever reaches a log, an error message or a repr.

Over the whole suite, it records the secrets that pass through the library (the
plaintext of every value sealed or opened, every data key a keyring makes or
unwraps, every LocalKeyring master key), and after each test it searches what the
test made visible for them:

- every record of the ``sqla_envelope`` and ``botocore`` loggers, at DEBUG
  (botocore's DEBUG logs show KMS request and response bodies);
- the message of every library error (EnvelopeError) created during the test,
  whether it reached the test or was caught on the way;
- every repr of an Encryptor, a keyring or a DataKey produced during the test
  (by the test, a log call or an error message).

Each secret of at least 16 bytes is looked for raw (as text), as hex (both
cases), as standard and URL-safe base64, and as Python's bytes repr. Shorter
secrets are not searched: "123" or a one-byte flag would match by chance (the
suite's own test names, ids and numbers). SQLAlchemy's SQL log is not scanned:
tests store plaintext in plaintext columns on purpose (the migrations' legacy
columns), and the library never writes to that log itself. A hit fails the test
that made it, naming where, never printing the secret.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

MIN_SECRET = 16

_secrets: set[bytes] = set()
_texts: list[tuple[str, str]] = []  # (where, text)


def _remember(value: Any) -> None:
    if isinstance(value, (bytes, bytearray, memoryview)) and len(value) >= MIN_SECRET:
        _secrets.add(bytes(value))


def _forms(secret: bytes) -> Iterator[str]:
    yield secret.hex()
    yield secret.hex().upper()
    yield base64.b64encode(secret).decode()
    yield base64.urlsafe_b64encode(secret).decode()
    yield repr(secret)[2:-1]
    try:
        text = secret.decode("utf-8")
    except UnicodeDecodeError:
        return
    if text.isprintable():
        yield text


class _Capture(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a record that cannot format shows nothing
            _texts.append((f"log {record.name}", self.format(record)))


def _wrap(
    owner: type,
    name: str,
    before: Callable[..., None] | None = None,
    after: Callable[[Any], None] | None = None,
) -> None:
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            before(*args, **kwargs)
        result = original(*args, **kwargs)
        if after is not None:
            after(result)
        return result

    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(owner, name, wrapper)


def _install() -> None:
    from sqla_envelope import Encryptor, EnvelopeError, KmsKeyring, LocalKeyring
    from sqla_envelope.keyrings.base import DataKey

    _wrap(Encryptor, "seal", before=lambda self, plaintext, *a, **k: _remember(plaintext))
    _wrap(Encryptor, "open", after=_remember)
    _wrap(
        LocalKeyring,
        "__init__",
        before=lambda self, keys, *a, **k: [_remember(key) for key in dict(keys).values()],
    )
    original_new = DataKey.__new__

    def data_key_new(cls: type, plaintext: bytes, *args: Any) -> Any:
        _remember(plaintext)
        return original_new(cls, plaintext, *args)

    DataKey.__new__ = staticmethod(data_key_new)  # type: ignore[method-assign,assignment]
    _wrap(LocalKeyring, "unwrap_data_key", after=_remember)
    _wrap(KmsKeyring, "unwrap_data_key", after=_remember)
    # credstash's 64-byte data keys (the credential store's import and export)
    _wrap(KmsKeyring, "decrypt_blob", after=_remember)
    _wrap(KmsKeyring, "generate_blob", after=lambda pair: _remember(pair[0]))

    original_init = EnvelopeError.__init__

    def error_init(self: BaseException, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)  # type: ignore[arg-type]
        _texts.append((f"error {type(self).__name__}", " ".join(map(str, args))))

    EnvelopeError.__init__ = error_init  # type: ignore[method-assign]

    for kind in (Encryptor, LocalKeyring, KmsKeyring, DataKey):
        _wrap_repr(kind)


def _wrap_repr(kind: type) -> None:
    original = kind.__repr__

    def record_repr(self: Any) -> str:
        text: str = original(self)
        _texts.append((f"repr {kind.__name__}", text))
        return text

    kind.__repr__ = record_repr  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    _install()
    handler = _Capture(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("sqla_envelope", "botocore"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)


def _hits() -> list[str]:
    """Where each secret of this test shows, searching all texts at once.

    One joined text and one substring search per form (C speed) instead of a
    loop over every text and secret: a property test makes thousands of both.
    """
    if not _secrets or not _texts:
        return []
    joined = "\0".join(text for _, text in _texts)
    found = [form for secret in _secrets for form in _forms(secret) if form in joined]
    hits = []
    for where, text in _texts:
        shown = [form for form in found if form in text]
        if shown:
            hits.append(where)
            if os.environ.get("LOGSCAN_SHOW"):  # for whoever debugs a hit, never in CI
                print("LOGSCAN HIT", where, text[:400])
    return hits


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    _secrets.clear()
    _texts.clear()
    try:
        result = yield
        hits = _hits()
    finally:
        _secrets.clear()
        _texts.clear()
    if hits:
        pytest.fail(
            "a plaintext or key of this test appeared in: " + ", ".join(sorted(set(hits))),
            pytrace=False,
        )
    return result
