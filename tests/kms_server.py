"""A moto KMS server for the KmsKeyring tests: fake credentials, keys, recorded requests.

The server runs in a thread for the whole session and answers every region on one
port. Requests are watched, and KMS errors injected, through botocore's own event
hooks on a ``boto3.Session`` handed to the keyring, so botocore still serializes,
signs, retries and parses exactly as it would against AWS.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from moto.server import ThreadedMotoServer

# Fixtures are defined as ``*_fixture`` and named without the suffix, so that a
# test module can import them without its parameters shadowing the imports.
__all__ = [
    "CLOSED_ENDPOINT",
    "OTHER_REGION",
    "REGION",
    "Key",
    "Recorder",
    "aws_env_fixture",
    "kms_endpoint_fixture",
    "make_key_fixture",
    "recorder_fixture",
]

REGION = "us-east-1"
OTHER_REGION = "us-west-2"
# A closed port: connections are refused at once.
CLOSED_ENDPOINT = "http://127.0.0.1:9"


@pytest.fixture(scope="session", name="kms_endpoint")
def kms_endpoint_fixture() -> Iterator[str]:
    """The URL of a moto server started once per session on a free port."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(name="aws_env")
def aws_env_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials, and nothing from the developer's ~/.aws: never real AWS."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS", "AWS_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@dataclass(frozen=True)
class Key:
    """A KMS key on the moto server, and the four ways to name it."""

    key_id: str
    arn: str
    alias_name: str
    alias_arn: str
    region: str


@pytest.fixture(name="make_key")
def make_key_fixture(kms_endpoint: str, aws_env: None) -> Callable[..., Key]:
    """Create a key (with a unique alias) in a region of the moto server."""

    def make(region: str = REGION) -> Key:
        admin = boto3.client("kms", region_name=region, endpoint_url=kms_endpoint)
        meta = admin.create_key(Description="sqla-envelope test")["KeyMetadata"]
        alias = f"alias/test-{uuid.uuid4().hex[:12]}"
        admin.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
        arn = meta["Arn"]
        alias_arn = arn.rsplit(":", 1)[0] + ":" + alias
        return Key(meta["KeyId"], arn, alias, alias_arn, region)

    return make


@dataclass(repr=False)
class Recorder:
    """A boto3 Session whose clients record each KMS request and can be made to fail.

    Hooks are registered on the session before the keyring builds its clients
    (each client copies the session's hooks when created), so they see every
    client the keyring makes, in every region; ``fail`` can change at any time.
    """

    session: boto3.session.Session
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    sends: list[str] = field(default_factory=list)
    failures: dict[str, tuple[str, int]] = field(default_factory=dict)
    # How many more answers of an operation fail; absent: every one.
    remaining: dict[str, int] = field(default_factory=dict)
    # Requests are sent from many threads at once (data keys made ahead, a
    # result's unwraps): ``remaining -= 1`` is a read and a write, and two
    # threads interleaving there would both fail where one should pass.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __repr__(self) -> str:
        # botocore's DEBUG log shows each hook as "<bound method ... of Recorder(...)>":
        # the recorded parameters hold data keys (Encrypt's Plaintext).
        return f"Recorder(<{len(self.calls)} calls>)"

    def operations(self) -> list[str]:
        return [name for name, _ in self.calls]

    def params(self, operation: str) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == operation]

    def clear(self) -> None:
        self.calls.clear()
        self.sends.clear()

    def fail(self, operation: str, code: str, status: int = 400, times: int | None = None) -> None:
        """Answer ``operation`` requests with a real KMS JSON 1.1 error response.

        Every one, or the next ``times`` ones. The answer replaces the HTTP
        exchange after botocore has built and signed the request; botocore then
        parses it as it would AWS's answer.
        """
        self.failures[operation] = (code, status)
        if times is None:
            self.remaining.pop(operation, None)
        else:
            self.remaining[operation] = times

    def on_params(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append((model.name, dict(params)))

    def on_send(self, request: Any, event_name: str, **_: Any) -> Any:
        """Record the attempt; return an error response to send in its place, or None."""
        operation = event_name.rsplit(".", 1)[-1]
        self.sends.append(operation)
        fault = self.failures.get(operation)  # one read: a test may clear them meanwhile
        if fault is None:
            return None
        with self._lock:
            left = self.remaining.get(operation)
            if left is not None:
                self.remaining[operation] = left - 1
                if left < 1:
                    return None
        code, status = fault
        body = json.dumps({"__type": code, "message": f"injected {code}"}).encode()
        headers: Any = {
            "Content-Type": "application/x-amz-json-1.1",
            "x-amzn-RequestId": str(uuid.uuid4()),
        }
        return AWSResponse(request.url, status, headers, _Body(body))


class _Body:
    """The raw body of an injected response: botocore reads it with ``stream()``."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


@pytest.fixture(name="recorder")
def recorder_fixture(aws_env: None) -> Recorder:
    """A recording, failure-injecting ``boto3.Session`` to hand to ``KmsKeyring(session=)``."""
    rec = Recorder(boto3.session.Session())
    rec.session.events.register("before-parameter-build.kms", rec.on_params)
    rec.session.events.register("before-send.kms", rec.on_send)
    return rec
