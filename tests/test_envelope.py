"""Unit tests of sqla_envelope.envelope: pack, unpack and the single-key fast path."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqla_envelope import Encryptor, LocalKeyring
from sqla_envelope.envelope import (
    COMMITMENT_SIZE,
    MIN_ENVELOPE_SIZE,
    MIN_V2_SIZE,
    NONCE_SIZE,
    TAG_SIZE,
    Envelope,
    WrappedKey,
    copies_end,
    envelope_size,
    header_end,
    header_size,
    pack,
    pack_header,
    pack_v1,
    unpack,
    wrapped_keys_of,
)
from sqla_envelope.errors import DecryptionError, MalformedEnvelopeError

NONCE = bytes(range(12))
SEALED = b"ciphertext" + b"T" * TAG_SIZE
BLOB = bytes(range(100, 148))  # 48 bytes, the size of a LocalKeyring wrap (AES-SIV)
ONE_KEY = (WrappedKey("a1b2c3", BLOB),)
THREE_KEYS = (
    WrappedKey("a1b2c3", BLOB),
    WrappedKey("arn:aws:kms:eu-west-1:111122223333:key/abcd", b"\xff" * 184),
    WrappedKey("x", b"\x00"),
)


def header(*keys: tuple[bytes, bytes], count: int | None = None) -> bytes:
    """Version, key count and raw (ref, wrapped) groups, with no validation at all."""
    out = bytes((1, len(keys) if count is None else count))
    for ref, blob in keys:
        out += bytes((len(ref),)) + ref + len(blob).to_bytes(2, "big") + blob
    return out


def real_envelope(plaintext: bytes = b"123-45-6789") -> bytes:
    keyring = LocalKeyring({"a1b2c3": b"\x01" * 32})
    return Encryptor(keyring).encrypt(plaintext, {"table": "users", "column": "ssn"})


# -- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("keys", [ONE_KEY, THREE_KEYS], ids=["one-key", "three-keys"])
def test_pack_unpack_round_trip(keys: tuple[WrappedKey, ...]) -> None:
    data = pack_v1(keys, NONCE, SEALED)
    parsed = unpack(data)
    assert parsed == Envelope(1, keys, NONCE, SEALED, len(data) - NONCE_SIZE - len(SEALED))
    assert parsed.plaintext_size == len(SEALED) - TAG_SIZE
    assert len(data) == envelope_size(
        parsed.plaintext_size, [(len(k.key_ref), len(k.blob)) for k in keys], version=1
    )
    assert data[parsed.header_size : parsed.header_size + NONCE_SIZE] == NONCE
    assert wrapped_keys_of(data, parsed.header_size) == keys


def test_pack_layout_byte_by_byte() -> None:
    data = pack_v1(ONE_KEY, NONCE, SEALED)
    assert data == b"\x01\x01\x06a1b2c3\x00\x30" + BLOB + NONCE + SEALED
    assert len(data) == 81 + 6 + len(SEALED) - TAG_SIZE


def test_pack_single_key_fast_path_matches_general_path() -> None:
    one = pack_v1(ONE_KEY, NONCE, SEALED)
    two = pack_v1((*ONE_KEY, *ONE_KEY), NONCE, SEALED)
    # The general path with the key count patched back to 1 and the copy removed.
    group = two[2 : 2 + 1 + 6 + 2 + 48]
    assert one == b"\x01\x01" + group + NONCE + SEALED


def test_pack_accepts_the_limits() -> None:
    keys = [WrappedKey("r" * 255, b"w" * 0xFFFF)] + [WrappedKey("k", b"\x00")] * 254
    data = pack_v1(keys, NONCE, b"T" * TAG_SIZE)
    parsed = unpack(data)
    assert len(parsed.wrapped_keys) == 255
    assert parsed.wrapped_keys[0] == keys[0]
    assert parsed.plaintext_size == 0
    assert header_size(data) == 0  # several keys: the fast path declines
    assert wrapped_keys_of(data, parsed.header_size) == tuple(keys)


def test_smallest_envelope() -> None:
    data = pack_v1([WrappedKey("k", b"w")], NONCE, b"T" * TAG_SIZE)
    assert len(data) == MIN_ENVELOPE_SIZE == 35
    assert unpack(data).header_size == 7
    assert header_size(data) == 7


# -- the header_size fast path ----------------------------------------------------------


@pytest.mark.parametrize("plaintext", [b"", b"x", b"123-45-6789", bytes(300)])
def test_header_size_fast_path_equals_unpack(plaintext: bytes) -> None:
    data = real_envelope(plaintext)
    assert header_size(data) == unpack(data).header_size == 2 + 1 + 6 + 2 + 48 + 32
    data = pack_v1(ONE_KEY, NONCE, b"x" * 40)
    assert header_size(data) == unpack(data).header_size


def test_header_size_declines_what_it_cannot_vouch_for() -> None:
    good = pack_v1(ONE_KEY, NONCE, SEALED)
    assert header_size(pack_v1(THREE_KEYS, NONCE, SEALED)) == 0
    assert header_size(b"") == 0
    assert header_size(b"\x03" + good[1:]) == 0
    assert header_size(good[:2] + b"\x00" + good[3:]) == 0  # zero-length key ref
    for cut in range(len(good) - len(SEALED) + TAG_SIZE):
        assert header_size(good[:cut]) == 0, cut


def test_header_end_measures_several_keys_as_unpack_does() -> None:
    # Multi-region envelopes hold a copy per key: their read path must not unpack twice.
    data = pack_v1(THREE_KEYS, NONCE, SEALED)
    assert header_end(data) == unpack(data).header_size
    assert wrapped_keys_of(data, header_end(data)) == THREE_KEYS
    for cut in range(len(data) - len(SEALED) + TAG_SIZE):
        with pytest.raises(MalformedEnvelopeError):
            header_end(data[:cut])
    later_empty = header((b"a1b2c3", BLOB), (b"", BLOB)) + NONCE + SEALED
    with pytest.raises(MalformedEnvelopeError):
        header_end(later_empty)
    non_ascii = header((b"a1b2c3", BLOB), (b"\xe2\x82\xac", BLOB)) + NONCE + SEALED
    with pytest.raises(MalformedEnvelopeError, match="not ASCII"):
        wrapped_keys_of(non_ascii, header_end(non_ascii))


# -- malformed input --------------------------------------------------------------------


def test_malformed_is_a_decryption_error() -> None:
    assert issubclass(MalformedEnvelopeError, DecryptionError)


def test_empty_value() -> None:
    with pytest.raises(MalformedEnvelopeError, match="empty"):
        unpack(b"")


@pytest.mark.parametrize("version", [0x00, 0x03, 0xFF])
def test_unknown_version(version: int) -> None:
    data = bytes((version,)) + pack_v1(ONE_KEY, NONCE, SEALED)[1:]
    with pytest.raises(MalformedEnvelopeError, match=f"unknown format version {version}"):
        unpack(data)
    with pytest.raises(MalformedEnvelopeError):
        unpack(bytes((version,)))  # the version is checked before the length


@pytest.mark.parametrize("keys", [ONE_KEY, THREE_KEYS], ids=["one-key", "three-keys"])
def test_every_truncation_of_an_empty_plaintext_envelope(keys: tuple[WrappedKey, ...]) -> None:
    data = pack_v1(keys, NONCE, b"T" * TAG_SIZE)  # nothing between the header and the tag
    unpack(data)
    for cut in range(len(data)):
        with pytest.raises(MalformedEnvelopeError):
            unpack(data[:cut])


def test_every_truncation_of_a_real_envelope_fails_to_decrypt() -> None:
    data = real_envelope(b"123-45-6789")
    encryptor = Encryptor(LocalKeyring({"a1b2c3": b"\x01" * 32}))
    context = {"table": "users", "column": "ssn"}
    shortest_parsable = unpack(data).header_size + NONCE_SIZE + TAG_SIZE
    for cut in range(len(data)):
        prefix = data[:cut]
        if cut < shortest_parsable:
            with pytest.raises(MalformedEnvelopeError):
                unpack(prefix)
            with pytest.raises(MalformedEnvelopeError):
                encryptor.decrypt(prefix, context)
        else:
            # Structurally whole, cryptographically not: the payload tag fails.
            assert unpack(prefix).plaintext_size == cut - shortest_parsable
            with pytest.raises(DecryptionError):
                encryptor.decrypt(prefix, context)
    assert encryptor.decrypt(data, context) == b"123-45-6789"


def test_zero_key_count() -> None:
    data = header((b"a1b2c3", BLOB), count=0) + NONCE + SEALED
    with pytest.raises(MalformedEnvelopeError, match="no wrapped data key"):
        unpack(data)


def test_zero_length_key_ref() -> None:
    data = header((b"", BLOB)) + NONCE + SEALED
    with pytest.raises(MalformedEnvelopeError, match="key reference"):
        unpack(data)


def test_zero_length_wrapped_key() -> None:
    data = header((b"a1b2c3", b"")) + NONCE + SEALED
    with pytest.raises(MalformedEnvelopeError, match="wrapped key"):
        unpack(data)
    assert header_size(data) == 0


@pytest.mark.parametrize("ref", [b"\xff", b"caf\xc3\xa9", b"key\x80"])
def test_non_ascii_key_ref(ref: bytes) -> None:
    data = header((ref, BLOB)) + NONCE + SEALED
    with pytest.raises(MalformedEnvelopeError, match="not ASCII"):
        unpack(data)
    # The fast path only measures; the slicing step after it still refuses.
    end = header_size(data)
    assert end == 2 + 1 + len(ref) + 2 + len(BLOB)
    with pytest.raises(MalformedEnvelopeError, match="not ASCII"):
        wrapped_keys_of(data, end)
    with pytest.raises(MalformedEnvelopeError):
        Encryptor(LocalKeyring({"a1b2c3": b"\x01" * 32})).decrypt(data, {})


def test_non_ascii_key_ref_in_a_later_copy() -> None:
    data = header((b"a1b2c3", BLOB), (b"\xe2\x82\xac", BLOB)) + NONCE + SEALED
    with pytest.raises(MalformedEnvelopeError, match="not ASCII"):
        unpack(data)


@pytest.mark.parametrize("after_nonce", [0, 1, TAG_SIZE - 1])
def test_ciphertext_shorter_than_a_tag(after_nonce: int) -> None:
    data = header((b"a1b2c3", BLOB)) + NONCE + b"T" * after_nonce
    with pytest.raises(MalformedEnvelopeError, match="truncated"):
        unpack(data)
    assert header_size(data) == 0


def test_key_count_claiming_more_keys_than_present() -> None:
    # Count 2 with one key: the nonce and sealed bytes are read as a second key,
    # which leaves too little behind (or does not fit at all).
    data = header((b"a1b2c3", BLOB), count=2) + NONCE + SEALED
    with pytest.raises(MalformedEnvelopeError, match="truncated"):
        unpack(data)


def test_wrapped_length_past_the_end() -> None:
    data = bytearray(pack_v1(ONE_KEY, NONCE, SEALED))
    data[9:11] = (0xFFFF).to_bytes(2, "big")
    with pytest.raises(MalformedEnvelopeError, match="truncated wrapped key"):
        unpack(bytes(data))
    assert header_size(bytes(data)) == 0


def test_key_ref_length_past_the_end() -> None:
    data = b"\x01\x01\xff" + b"k" * (MIN_ENVELOPE_SIZE - 3)
    with pytest.raises(MalformedEnvelopeError, match="truncated key reference"):
        unpack(data)
    assert header_size(data) == 0


# -- pack refuses what the format cannot hold -------------------------------------------


@pytest.mark.parametrize(
    ("keys", "nonce", "sealed"),
    [
        pytest.param([], NONCE, SEALED, id="no-keys"),
        pytest.param([WrappedKey("k", b"w")] * 256, NONCE, SEALED, id="256-keys"),
        pytest.param([WrappedKey("", BLOB)], NONCE, SEALED, id="empty-ref"),
        pytest.param([WrappedKey("r" * 256, BLOB)], NONCE, SEALED, id="256-byte-ref"),
        pytest.param([WrappedKey("k", b"")], NONCE, SEALED, id="empty-wrapped"),
        pytest.param([WrappedKey("k", b"w" * 0x10000)], NONCE, SEALED, id="65536-byte-wrapped"),
        pytest.param([WrappedKey("café", BLOB)], NONCE, SEALED, id="non-ascii-ref"),
        pytest.param([*ONE_KEY, WrappedKey("", BLOB)], NONCE, SEALED, id="second-ref-empty"),
        pytest.param(
            [*ONE_KEY, WrappedKey("k", b"w" * 0x10000)], NONCE, SEALED, id="second-wrapped-big"
        ),
        pytest.param(ONE_KEY, NONCE[:11], SEALED, id="11-byte-nonce"),
        pytest.param(ONE_KEY, NONCE + b"\x00", SEALED, id="13-byte-nonce"),
        pytest.param(ONE_KEY, NONCE, b"T" * (TAG_SIZE - 1), id="sealed-shorter-than-tag"),
        pytest.param(ONE_KEY, NONCE, b"", id="sealed-empty"),
    ],
)
def test_pack_refuses_out_of_range(keys: list[WrappedKey], nonce: bytes, sealed: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError, the point is refusal
        pack_v1(keys, nonce, sealed)


# -- format v2 ------------------------------------------------------------------------

COMMITMENT = bytes(range(200, 232))


def test_v2_layout_byte_by_byte() -> None:
    data = pack(ONE_KEY, COMMITMENT, NONCE, SEALED)
    header = b"\x02\x01\x06a1b2c3\x00\x30" + BLOB + COMMITMENT
    assert data == header + NONCE + SEALED
    assert pack_header(ONE_KEY, COMMITMENT) == header
    assert len(data) == 113 + 6 + len(SEALED) - TAG_SIZE
    parsed = unpack(data)
    assert parsed == Envelope(2, ONE_KEY, NONCE, SEALED, len(header), COMMITMENT)
    assert header_size(data) == header_end(data) == len(header)
    assert copies_end(data, len(header)) == len(header) - COMMITMENT_SIZE
    assert wrapped_keys_of(data, len(header)) == ONE_KEY
    assert len(data) == envelope_size(parsed.plaintext_size, [(6, len(BLOB))])
    assert envelope_size(parsed.plaintext_size, [(6, len(BLOB))], version=1) == len(data) - 32


def test_v2_several_keys_and_the_single_key_fast_path_agree() -> None:
    data = pack(THREE_KEYS, COMMITMENT, NONCE, SEALED)
    parsed = unpack(data)
    assert parsed.wrapped_keys == THREE_KEYS and parsed.commitment == COMMITMENT
    assert header_size(data) == 0  # several keys: the fast path declines
    assert header_end(data) == parsed.header_size
    assert wrapped_keys_of(data, parsed.header_size) == THREE_KEYS
    one = pack(ONE_KEY, COMMITMENT, NONCE, SEALED)
    two = pack((*ONE_KEY, *ONE_KEY), COMMITMENT, NONCE, SEALED)
    group = two[2 : 2 + 1 + 6 + 2 + 48]
    assert one == b"\x02\x01" + group + COMMITMENT + NONCE + SEALED


def test_smallest_v2_envelope_and_every_truncation() -> None:
    data = pack([WrappedKey("k", b"w")], COMMITMENT, NONCE, b"T" * TAG_SIZE)
    assert len(data) == MIN_V2_SIZE == 67
    assert unpack(data).header_size == header_size(data) == 39
    for cut in range(len(data)):
        with pytest.raises(MalformedEnvelopeError):
            unpack(data[:cut])
        assert header_size(data[:cut]) == 0


@pytest.mark.parametrize("size", [0, 31, 33])
def test_pack_refuses_a_commitment_of_the_wrong_size(size: int) -> None:
    with pytest.raises(ValueError, match="commitment"):
        pack(ONE_KEY, b"c" * size, NONCE, SEALED)


def test_v1_and_v2_headers_of_the_same_keys_never_share_a_cache_key() -> None:
    # The key cache is keyed by the whole header: the version byte and the
    # commitment keep a v1 entry and a v2 entry apart.
    v1, v2 = pack_v1(ONE_KEY, NONCE, SEALED), pack(ONE_KEY, COMMITMENT, NONCE, SEALED)
    assert v1[: header_end(v1)] != v2[: header_end(v2)]


# -- reprs never show the wrapped blob --------------------------------------------------


def test_reprs_hide_wrapped_blobs() -> None:
    blob = bytes.fromhex("deadbeefcafebabe") * 6
    key = WrappedKey("a1b2c3", blob)
    data = pack_v1([key, WrappedKey("b", blob)], NONCE, SEALED)
    parsed = unpack(data)
    for text in (repr(key), str(key), repr(parsed), str(parsed), repr(parsed.wrapped_keys)):
        assert "a1b2c3" in text
        for leak in (repr(blob), blob.hex(), "deadbeef", "\\xde\\xad", "xde"):
            assert leak not in text, text
    assert repr(key) == "WrappedKey(key_ref='a1b2c3', blob=<48 bytes>)"
    assert repr(parsed) == (
        f"Envelope(version=1, key_refs=['a1b2c3', 'b'], plaintext_size={len(SEALED) - TAG_SIZE})"
    )
    assert NONCE.hex() not in repr(parsed)


# -- fuzzing ----------------------------------------------------------------------------


def _check_any_bytes(data: bytes) -> None:
    """unpack returns an Envelope or raises MalformedEnvelopeError; nothing else.

    The fast paths (header_size, header_end, wrapped_keys_of) agree with it.
    """
    fast = header_size(data)
    try:
        end = header_end(data)
    except MalformedEnvelopeError:
        end = 0
    try:
        parsed = unpack(data)
    except MalformedEnvelopeError:
        # The fast paths may measure a non-ASCII key reference; the slice step refuses it.
        for size in {fast, end} - {0}:
            with pytest.raises(MalformedEnvelopeError):
                wrapped_keys_of(data, size)
        return
    assert isinstance(parsed, Envelope)
    assert parsed.version in (1, 2)
    assert len(parsed.commitment) == (COMMITMENT_SIZE if parsed.version == 2 else 0)
    assert 1 <= len(parsed.wrapped_keys) <= 255
    assert len(parsed.nonce) == NONCE_SIZE
    assert len(parsed.sealed) >= TAG_SIZE
    assert parsed.header_size + NONCE_SIZE + len(parsed.sealed) == len(data)
    assert fast == (parsed.header_size if len(parsed.wrapped_keys) == 1 else 0)
    assert wrapped_keys_of(data, parsed.header_size) == parsed.wrapped_keys
    assert end == parsed.header_size
    if parsed.version == 1:
        repacked = pack_v1(parsed.wrapped_keys, parsed.nonce, parsed.sealed)
    else:
        repacked = pack(parsed.wrapped_keys, parsed.commitment, parsed.nonce, parsed.sealed)
    assert repacked == data


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_fuzz_unpack_arbitrary_bytes(data: bytes) -> None:
    _check_any_bytes(data)


@settings(max_examples=1000)
@given(st.binary(max_size=200))
def test_fuzz_unpack_version_one(rest: bytes) -> None:
    _check_any_bytes(b"\x01" + rest)


@settings(max_examples=1000)
@given(st.binary(max_size=200))
def test_fuzz_unpack_version_two(rest: bytes) -> None:
    _check_any_bytes(b"\x02" + rest)


@st.composite
def near_envelopes(draw: st.DrawFn) -> bytes:
    """Well-formed envelopes with a few bytes overwritten, cut or appended."""
    keys = draw(
        st.lists(
            st.builds(
                WrappedKey,
                st.text(st.characters(min_codepoint=0, max_codepoint=127), min_size=1, max_size=8),
                st.binary(min_size=1, max_size=70),
            ),
            min_size=1,
            max_size=3,
        )
    )
    nonce = draw(st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE))
    sealed = draw(st.binary(min_size=TAG_SIZE, max_size=40))
    if draw(st.booleans()):
        data = bytearray(pack_v1(keys, nonce, sealed))
    else:
        commitment = draw(st.binary(min_size=COMMITMENT_SIZE, max_size=COMMITMENT_SIZE))
        data = bytearray(pack(keys, commitment, nonce, sealed))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=4))


@settings(max_examples=1000)
@given(near_envelopes())
def test_fuzz_unpack_near_envelopes(data: bytes) -> None:
    _check_any_bytes(data)
