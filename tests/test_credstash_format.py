"""credstash's storage format, byte for byte (CREDSTASH.md sections 2.5 and 6.A, cases 1-7).

The vectors come from credstash 1.17.1's own _seal_aes_ctr with a fake key service
returning the 64-byte data key 00 01 .. 3f; no AWS here.
"""

from __future__ import annotations

import base64

import pytest

from sqla_envelope import ConfigurationError, DecryptionError, MalformedEnvelopeError
from sqla_envelope.secrets.credstash_format import (
    normalize_version,
    open_contents,
    padded_version,
    seal_contents,
)

DATA_KEY = bytes(range(64))
VECTORS = [
    ("hunter2", "SHA256", "mCgY2i/LrQ==",
     "616e8a0375ea6bafe9fa59775b40795ac225db317a21fa636c747ab2333f7755"),
    ("hunter2", "SHA512", "mCgY2i/LrQ==",
     "efbac3afdd38d8e41fa926cabac92df76949c3db92c8e7dd3df8144e7347c2ce"
     "90d2740b3772cecbde52704f68b30de0faa99880206ebe04a3df87082df83282"),
    ("hunter2", "SHA", "mCgY2i/LrQ==", "6d7d47a30990f5710f85d045ee6fd84c130f95ff"),
    ("pässwörd ✓", "SHA256", "gJ7S3TnOXFPUkrvT1FE=",
     "3e53f207d29c34f4d187eb2452be203ccd2f7e1b962e824c62b0eafc4a1a9dde"),
    ("", "SHA256", "", "f49240b78aa90e53f46106c3481e377e19696e777328b1cd6ec6061a0bd868a9"),
]  # fmt: skip


@pytest.mark.parametrize(("plaintext", "digest", "contents", "tag"), VECTORS)
def test_the_vectors_seal_and_open_byte_for_byte(  # cases 1, 2
    plaintext: str, digest: str, contents: str, tag: str
) -> None:
    assert seal_contents(DATA_KEY, plaintext.encode(), digest) == (contents, tag)
    assert open_contents(DATA_KEY, contents, tag, digest).decode() == plaintext


def test_hmac_as_string_bytes_or_binary_and_a_missing_digest() -> None:  # cases 3, 4
    _, _, contents, tag = VECTORS[0]

    class Binary:  # what boto3 returns for a DynamoDB B attribute
        value = tag.encode()

    for stored in (tag, tag.encode(), Binary()):
        assert open_contents(DATA_KEY, contents, stored, None) == b"hunter2"  # None: SHA256
    md5 = seal_contents(DATA_KEY, b"x", "MD5")
    assert open_contents(DATA_KEY, *md5, "MD5") == b"x"
    for retired in ("RIPEMD", "WHIRLPOOL", "MD2", "MD4"):
        with pytest.raises(ConfigurationError, match=retired):
            open_contents(DATA_KEY, contents, tag, retired)


def test_a_changed_bit_fails_and_never_returns_plaintext() -> None:  # cases 5, 6
    _, digest, contents, tag = VECTORS[3]
    raw = bytearray(base64.b64decode(contents))
    raw[0] ^= 1
    with pytest.raises(DecryptionError):
        open_contents(DATA_KEY, base64.b64encode(bytes(raw)).decode(), tag, digest)
    flipped = ("0" if tag[0] != "0" else "1") + tag[1:]
    for bad_tag in (flipped, tag[:-2]):
        with pytest.raises(DecryptionError):
            open_contents(DATA_KEY, contents, bad_tag, digest)
    with pytest.raises(MalformedEnvelopeError):
        open_contents(DATA_KEY, contents, "not hex", digest)


def test_a_data_key_of_another_length_splits_in_half() -> None:  # case 7
    key = bytes(range(48))  # 24-byte AES key, 24-byte HMAC key
    contents, tag = seal_contents(key, b"odd key")
    assert open_contents(key, contents, tag, "SHA256") == b"odd key"


def test_versions_padded_and_legacy() -> None:  # case 34
    assert normalize_version("0000000000000000007") == 7
    assert normalize_version("10") == 10
    assert padded_version(7) == "0000000000000000007"
    with pytest.raises(MalformedEnvelopeError):
        normalize_version("v1.0.0-1")


def test_an_item_kept_verbatim_packs_and_unpacks_exactly() -> None:
    from sqla_envelope.secrets.credstash_format import (
        PAYLOAD_PREFIX,
        CredstashItem,
        item_of,
        pack_item,
        unpack_item,
    )

    _, digest, contents, tag = VECTORS[3]
    dynamodb = {"name": "n", "version": "1", "key": "AQID", "contents": contents,
                "hmac": tag.encode(), "digest": digest}  # fmt: skip
    item = item_of(dynamodb, "alias/credstash")
    assert item == CredstashItem("AQID", contents, tag, True, digest, "alias/credstash")
    assert item_of({**dynamodb, "hmac": tag}, "k").hmac_binary is False
    assert item_of({k: v for k, v in dynamodb.items() if k != "digest"}, "k").digest is None
    payload = pack_item(item)
    assert payload.startswith(PAYLOAD_PREFIX) and unpack_item(payload) == item
    assert contents not in repr(item) and tag not in repr(item)
    for bad in (b"", b"\x02" + payload, payload[:-1], PAYLOAD_PREFIX + b"[]",
                PAYLOAD_PREFIX + b'{"key": 1}', PAYLOAD_PREFIX + b"\xff",
                PAYLOAD_PREFIX + b" " * (1024 * 1024)):  # fmt: skip
        with pytest.raises(MalformedEnvelopeError):
            unpack_item(bad)
