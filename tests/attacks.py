"""An attacker's tool: one AES-GCM ciphertext that authenticates under two keys.

The "invisible salamanders" construction (Dodis, Grubbs, Ristenpart, Woodage,
"Fast Message Franking", CRYPTO 2018; Len, Grubbs, Ristenpart, "Partitioning
Oracle Attacks", USENIX Security 2021). GCM's tag is a polynomial in the hash key
H = AES_K(0^128) over the associated data and ciphertext blocks, masked with
AES_K(J0): with one ciphertext block left free, making the two tags equal is one
linear equation in GF(2^128). The multiplication is NIST SP 800-38D's Algorithm 1.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_R = 0xE1 << 120  # x^128 + x^7 + x^2 + x + 1, in GCM's bit order


def _gf_mul(x: int, y: int) -> int:
    """X * Y in GF(2^128), blocks as integers with the first bit the most significant."""
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ _R if v & 1 else v >> 1
    return z


def _gf_inverse(x: int) -> int:
    """x^(2^128 - 2), the inverse of a non-zero element."""
    result, power, exponent = 1 << 127, x, (1 << 128) - 2  # 1 << 127 is the unit
    while exponent:
        if exponent & 1:
            result = _gf_mul(result, power)
        power = _gf_mul(power, power)
        exponent >>= 1
    return result


def _aes(key: bytes, block: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def _blocks(data: bytes) -> list[int]:
    padded = data + bytes(-len(data) % 16)
    return [int.from_bytes(padded[i : i + 16], "big") for i in range(0, len(padded), 16)]


def _ghash(h: int, aad: bytes, ciphertext: bytes) -> int:
    lengths = ((len(aad) * 8) << 64) | (len(ciphertext) * 8)
    y = 0
    for block in [*_blocks(aad), *_blocks(ciphertext), lengths]:
        y = _gf_mul(y ^ block, h)
    return y


def _keystream(key: bytes, nonce: bytes, blocks: int) -> bytes:
    return b"".join(
        _aes(key, nonce + (counter + 2).to_bytes(4, "big")) for counter in range(blocks)
    )


def two_key_ciphertext(
    key_a: bytes, key_b: bytes, nonce: bytes, aad: bytes, block_a: bytes, block_b: bytes
) -> bytes:
    """``ciphertext || tag`` that AES-GCM opens under both keys, with the same nonce and aad.

    Under ``key_a`` the first plaintext block is ``block_a``, under ``key_b`` the
    second is ``block_b`` (16 bytes each); the third block is what makes the two
    tags equal, and the rest of each plaintext is noise.
    """
    assert len(nonce) == 12 and len(block_a) == len(block_b) == 16
    stream_a, stream_b = _keystream(key_a, nonce, 3), _keystream(key_b, nonce, 3)
    first = bytes(p ^ k for p, k in zip(block_a, stream_a[:16], strict=True))
    second = bytes(p ^ k for p, k in zip(block_b, stream_b[16:32], strict=True))
    prefix = first + second
    h_a = int.from_bytes(_aes(key_a, bytes(16)), "big")
    h_b = int.from_bytes(_aes(key_b, bytes(16)), "big")
    j0 = nonce + (1).to_bytes(4, "big")
    mask_a = int.from_bytes(_aes(key_a, j0), "big")
    mask_b = int.from_bytes(_aes(key_b, j0), "big")
    # With the free block at zero, then solved: its coefficient in GHASH is H^2
    # (only the lengths block follows it).
    base = prefix + bytes(16)
    difference = _ghash(h_a, aad, base) ^ _ghash(h_b, aad, base) ^ mask_a ^ mask_b
    coefficient = _gf_mul(h_a, h_a) ^ _gf_mul(h_b, h_b)
    free = _gf_mul(difference, _gf_inverse(coefficient))
    ciphertext = prefix + free.to_bytes(16, "big")
    tag = _ghash(h_a, aad, ciphertext) ^ mask_a
    return ciphertext + tag.to_bytes(16, "big")
