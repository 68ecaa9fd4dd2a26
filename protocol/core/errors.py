"""The error tree of the wafleet stack. Every layer's errors descend from `WhatsAppError`.

    WhatsAppError                      root; structured fields, never meaning in the message text
    ├── FrameError                     transport framing: intro header, 3-byte length, frame size
    ├── DecodeError                    binary nodes, protobufs, JIDs: garbage or truncated input
    ├── HandshakeError                 Noise XX handshake and the server certificate chain
    ├── CryptoError                    malformed key material, bad signature encoding, bad DH input
    ├── DecryptionError                Signal decryption; stored state is left unchanged
    │   ├── InvalidMessage             truncated, forged (bad MAC/signature) or foreign message
    │   ├── DuplicateMessage           a counter/iteration whose key was already used
    │   ├── NoSession                  no session (or sender key) for that address
    │   └── UntrustedIdentity          the peer's identity key differs from the trusted one
    ├── PairingError                   ADV HMAC/signature checks, pairing-code unwrapping
    └── MediaError                     media hash or MAC mismatch, bad media key

Other layers add their own branches (the asyncio client's connection errors, storage's
`StorageError`, the fleet's task errors); which errors are retryable is decided in one place by
the fleet (workers), not here.

Importing this module has no side effects; protocol.core code raises only these (foreign
exceptions are wrapped at the boundary where they occur).
"""

from __future__ import annotations

from collections.abc import Mapping


class WhatsAppError(Exception):
    """Root of every wafleet error. `code` is a stable machine-readable name per class."""

    code = "whatsapp_error"

    def __init__(self, text: str, **details: object) -> None:
        super().__init__(text)
        self.text = text
        self.details: Mapping[str, object] = details

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.details.items())
        return f"{type(self).__name__}({self.text!r}{extra})"


class FrameError(WhatsAppError):
    """Bad transport framing (SPEC §2.2–§2.4)."""

    code = "frame_error"


class DecodeError(WhatsAppError):
    """Input that does not decode: binary node (SPEC §4), protobuf (§6) or JID (§5)."""

    code = "decode_error"


class HandshakeError(WhatsAppError):
    """The Noise handshake failed or the server certificate chain did not verify (SPEC §3)."""

    code = "handshake_error"


class CryptoError(WhatsAppError):
    """Malformed key material or signature input (wrong length, low-order point)."""

    code = "crypto_error"


class DecryptionError(WhatsAppError):
    """A Signal message could not be decrypted; no stored state was changed (SPEC §10)."""

    code = "decryption_error"


class InvalidMessage(DecryptionError):
    """Truncated, forged (bad MAC or signature), wrong version, or not for us."""

    code = "invalid_message"


class DuplicateMessage(DecryptionError):
    """The message key for this counter was already used (a replay or a redelivery)."""

    code = "duplicate_message"


class NoSession(DecryptionError):
    """No session (or sender key state) exists for the sender's address."""

    code = "no_session"


class UntrustedIdentity(DecryptionError):
    """The sender's identity key is not the one trusted for that address."""

    code = "untrusted_identity"


class PairingError(WhatsAppError):
    """Pairing verification failed: ADV HMAC, account/device signature, link code (SPEC §8–§9)."""

    code = "pairing_error"


class MediaError(WhatsAppError):
    """Media integrity failure: file hash, encrypted hash or MAC mismatch (SPEC §11)."""

    code = "media_error"
