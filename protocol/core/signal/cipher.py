"""AES-256-CBC with PKCS#7 padding, the payload cipher of `msg`, `pkmsg` and `skmsg`
(SPEC §10.5, §10.8; Appendix C). Bad padding raises `InvalidMessage`.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocol.core.errors import InvalidMessage

BLOCK = 16  # AES block size; PKCS#7 pads 1..16 bytes


def encrypt(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    pad = BLOCK - len(plaintext) % BLOCK
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(plaintext + bytes((pad,)) * pad) + enc.finalize()


def decrypt(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    if not ciphertext or len(ciphertext) % BLOCK:
        raise InvalidMessage("ciphertext is not whole AES blocks", length=len(ciphertext))
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = dec.update(ciphertext) + dec.finalize()
    pad = padded[-1]
    if not 1 <= pad <= BLOCK or padded[-pad:] != bytes((pad,)) * pad:
        raise InvalidMessage("bad PKCS#7 padding")
    return padded[:-pad]
