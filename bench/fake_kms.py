"""An in-client fake of AWS KMS for latency benchmarks: botocore does its work, AWS's is faked.

Attach a ``FakeKms`` to a ``boto3.session.Session`` before any KMS client is made
from it (clients copy the session's hooks when they are created)::

    fake = FakeKms(latency=0.005)
    session = fake.attach(boto3.session.Session())
    keyring = KmsKeyring(KEY_ARN, session=session, region_name="us-east-1")

Every KMS request is answered in botocore's ``before-send`` hook, after botocore
has validated, serialized and signed it and before anything touches the network:
the hook sleeps ``latency`` seconds in the calling thread (an in-region round trip
is about 5 ms; this is the wait that concurrency hides) and returns an HTTP 200
JSON 1.1 response shaped as KMS's, which botocore then parses as usual. So the
client-side CPU of each call (about 0.4 ms) is all still spent, and none of AWS's.

Answered: GenerateDataKey, Encrypt, Decrypt, DescribeKey. Any key id, alias or ARN
is accepted and names a key created on first use, with its own random master key.
A ciphertext really binds its data key, its key and its encryption context::

    CiphertextBlob = u8 len | key ARN | 12-byte nonce | AES-GCM(master, nonce, data key,
                                                          aad = canonical JSON of the context)

so a Decrypt under another context or with a tampered blob fails as KMS does, with
a 400 ``InvalidCiphertextException`` (``IncorrectKeyException`` when ``KeyId``
names another key). Calls are counted per operation, thread-safely. This is a
benchmark tool, not a test double: the tests use moto's server.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

from botocore.awsrequest import AWSResponse
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["FakeKms"]

_NONCE_SIZE = 12
_KEY_SPEC_BYTES = {"AES_256": 32, "AES_128": 16}
_SYMMETRIC = "SYMMETRIC_DEFAULT"


class _KmsError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Body:
    """A response's raw body: botocore reads it through ``stream()``."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _canonical(context: dict[str, str] | None) -> bytes:
    return json.dumps(context or {}, sort_keys=True, separators=(",", ":")).encode()


class FakeKms:
    """KMS answered inside the client after ``latency`` seconds; see the module docstring."""

    def __init__(
        self, latency: float = 0.005, *, region: str = "us-east-1", account: str = "111122223333"
    ) -> None:
        self.latency = latency
        self.region = region
        self.account = account
        self._masters: dict[str, tuple[AESGCM, str]] = {}  # key ARN -> (master, material id)
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._in_flight = 0
        self.peak_in_flight = 0  # most requests held in their sleep at once

    def attach(self, session: Any) -> Any:
        """Answer every KMS request of the clients ``session`` makes from now on."""
        session.events.register("before-send.kms", self.on_send)
        return session

    def calls(self) -> dict[str, int]:
        """Requests answered so far, per operation (a copy)."""
        with self._lock:
            return dict(self._calls)

    def take_peak(self) -> int:
        """The most requests held at once since the last call, and start counting anew."""
        with self._lock:
            peak, self.peak_in_flight = self.peak_in_flight, self._in_flight
        return peak

    # -- the hook -----------------------------------------------------------------

    def on_send(self, request: Any, event_name: str, **_: Any) -> AWSResponse:
        operation = event_name.rsplit(".", 1)[-1]
        with self._lock:
            self._calls[operation] += 1
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        try:
            if self.latency > 0:
                time.sleep(self.latency)  # the round trip, in the caller's thread
        finally:
            with self._lock:
                self._in_flight -= 1
        body = request.body or b"{}"
        params = json.loads(body.decode() if isinstance(body, bytes) else body)
        handler = getattr(self, "_" + operation, None)
        try:
            if handler is None:
                raise _KmsError("UnsupportedOperationException", f"{operation} is not faked")
            return self._response(request, 200, handler(params))
        except _KmsError as exc:
            return self._response(request, 400, {"__type": exc.code, "message": str(exc)})

    def _response(self, request: Any, status: int, payload: dict[str, Any]) -> AWSResponse:
        data = json.dumps(payload).encode()
        headers = {
            "x-amzn-RequestId": str(uuid.uuid4()),
            "Content-Type": "application/x-amz-json-1.1",
            "Content-Length": str(len(data)),
        }
        return AWSResponse(request.url, status, headers, _Body(data))

    # -- keys -----------------------------------------------------------------------

    def _arn(self, key_id: str) -> str:
        """The key ARN behind a key id, key ARN, alias name or alias ARN."""
        if key_id.startswith("arn:"):
            resource = key_id.split(":", 5)[-1]
            if resource.startswith("key/"):
                return key_id
            key_id = resource  # alias/...
        if key_id.startswith("alias/"):
            key_id = str(uuid.uuid5(uuid.NAMESPACE_URL, key_id))
        return f"arn:aws:kms:{self.region}:{self.account}:key/{key_id}"

    def _master(self, arn: str) -> tuple[AESGCM, str]:
        master = self._masters.get(arn)  # no lock on the hot path: keys are never removed
        if master is None:
            with self._lock:
                master = self._masters.get(arn)
                if master is None:
                    material_id = os.urandom(32).hex()
                    master = (AESGCM(AESGCM.generate_key(256)), material_id)
                    self._masters[arn] = master
        return master

    def _seal(self, arn: str, data: bytes, context: dict[str, str] | None) -> bytes:
        master = self._master(arn)[0]
        nonce = os.urandom(_NONCE_SIZE)
        name = arn.encode()
        return bytes((len(name),)) + name + nonce + master.encrypt(nonce, data, _canonical(context))

    # -- operations ------------------------------------------------------------------

    def _GenerateDataKey(self, params: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        arn = self._arn(params["KeyId"])
        size = params.get("NumberOfBytes") or _KEY_SPEC_BYTES[params.get("KeySpec", "AES_256")]
        plaintext = os.urandom(size)
        blob = self._seal(arn, plaintext, params.get("EncryptionContext"))
        return {
            "CiphertextBlob": _b64(blob),
            "Plaintext": _b64(plaintext),
            "KeyId": arn,
            "KeyMaterialId": self._master(arn)[1],
        }

    def _Encrypt(self, params: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        arn = self._arn(params["KeyId"])
        plaintext = base64.b64decode(params["Plaintext"])
        blob = self._seal(arn, plaintext, params.get("EncryptionContext"))
        return {"CiphertextBlob": _b64(blob), "KeyId": arn, "EncryptionAlgorithm": _SYMMETRIC}

    def _Decrypt(self, params: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        blob = base64.b64decode(params["CiphertextBlob"])
        end = 1 + blob[0] if blob else 0
        arn = blob[1:end].decode("ascii", "replace")
        if not blob or arn not in self._masters or len(blob) < end + _NONCE_SIZE + 16:
            raise _KmsError("InvalidCiphertextException", "")
        if "KeyId" in params and self._arn(params["KeyId"]) != arn:
            raise _KmsError("IncorrectKeyException", "The key ID in the request does not match")
        master, material_id = self._master(arn)
        nonce, sealed = blob[end : end + _NONCE_SIZE], blob[end + _NONCE_SIZE :]
        try:
            plaintext = master.decrypt(nonce, sealed, _canonical(params.get("EncryptionContext")))
        except InvalidTag:
            raise _KmsError("InvalidCiphertextException", "") from None
        return {
            "KeyId": arn,
            "Plaintext": _b64(plaintext),
            "EncryptionAlgorithm": _SYMMETRIC,
            "KeyMaterialId": material_id,
        }

    def _DescribeKey(self, params: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        arn = self._arn(params["KeyId"])
        _, material_id = self._master(arn)
        return {
            "KeyMetadata": {
                "AWSAccountId": self.account,
                "KeyId": arn.rsplit("/", 1)[-1],
                "Arn": arn,
                "CreationDate": 1.7e9,
                "Enabled": True,
                "Description": "",
                "KeyUsage": "ENCRYPT_DECRYPT",
                "KeyState": "Enabled",
                "Origin": "AWS_KMS",
                "KeyManager": "CUSTOMER",
                "CustomerMasterKeySpec": _SYMMETRIC,
                "KeySpec": _SYMMETRIC,
                "EncryptionAlgorithms": [_SYMMETRIC],
                "MultiRegion": False,
                "CurrentKeyMaterialId": material_id,
            }
        }


def fake_aws_environment(region: str = "us-east-1") -> None:
    """Fake credentials and nothing from ~/.aws or the environment: never real AWS."""
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_KMS",
        "AWS_MAX_ATTEMPTS",
        "AWS_RETRY_MODE",
        "AWS_CA_BUNDLE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        os.environ.pop(name, None)
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_SESSION_TOKEN": "bench",
            "AWS_DEFAULT_REGION": region,
            "AWS_CONFIG_FILE": "/nonexistent/aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
