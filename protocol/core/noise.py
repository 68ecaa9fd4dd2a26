"""WhatsApp's Noise XX handshake (SPEC §3) in both roles, and the transport ciphers.

Owns: `NoiseInitiator` (our client), `NoiseResponder` (the simulator), the server certificate
chain (`make_cert_chain` for a responder signing with its own root key, `verify_cert_chain`
with whatsmeow's full set of checks against a configurable trusted root, SPEC §3.6), and
`TransportCipher`/`NoiseTransport` (AES-256-GCM with counter nonces, SPEC §3.7).

Each role is a small state machine over whole handshake messages (serialized
`HandshakeMessage` protobufs, without the 3-byte frame header, which is protocol.core.framing's
job). Keys and time come in as arguments: the ephemeral key pair is made by the caller from its
`rng` (`curve.generate_keypair(rng)`), and the certificate validity is checked against the
`now` passed to `read_server_hello`, so a recorded transcript replays byte for byte (SPEC §18.2).

WhatsApp's deviation from textbook Noise (SPEC §3.1): no `MixHash` of the empty payload of the
first message, and one nonce counter during the handshake, shared by encrypt and decrypt and
reset by every MixKey (§3.4).

Errors: a failed step raises `HandshakeError(step=HandshakeStep…, reason=…)` and leaves the
machine in the FAILED state; a transport frame that fails to authenticate raises
`FrameError(reason="decrypt_failed", counter=n)` (the counter still advances, as in whatsmeow).

Must not import: anything outside protocol.core (no I/O, clock or randomness).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocol.core import curve
from protocol.core.curve import KeyPair
from protocol.core.errors import CryptoError, DecodeError, FrameError, HandshakeError
from protocol.core.framing import wa_header
from protocol.core.proto import parse
from protocol.core.proto.wa6_pb2 import CertChain, ClientPayload, HandshakeMessage

# SPEC §3.1: protocol name, exactly 32 bytes, used as-is as the initial h and ck.
NOISE_MODE = b"Noise_XX_25519_AESGCM_SHA256\x00\x00\x00\x00"
# SPEC §3.6: WhatsApp's root public key (`WA_CERT_DETAILS.PUBLIC_KEY` in Baileys,
# `WACertPubKey` in whatsmeow handshake.go) and the serial its certificates name as issuer.
WA_CERT_ROOT_PUBLIC_KEY = bytes.fromhex(
    "142375574d0a587166aae71ebe516437c4a28b73e3695c6ce1f7f9545da8ee6b"
)
WA_CERT_ISSUER_SERIAL = 0
KEY_LEN = 32
SIGNATURE_LEN = 64
TAG_LEN = 16  # AES-GCM tag appended to every ciphertext (SPEC §3.1)
MAX_COUNTER = 0xFFFFFFFF  # the nonce holds the counter in 4 bytes (SPEC §3.4 IV layout)
_IV_PREFIX = bytes(8)


class HandshakeStep(enum.Enum):
    """Where a handshake failed: the message being read or written."""

    CLIENT_HELLO = "client_hello"
    SERVER_HELLO = "server_hello"
    CERTIFICATE = "certificate"
    CLIENT_FINISH = "client_finish"


class HandshakeState(enum.Enum):
    START = "start"
    HELLO_SENT = "hello_sent"  # initiator: ClientHello written
    HELLO_READ = "hello_read"  # responder: ClientHello read
    SERVER_HELLO_SENT = "server_hello_sent"  # responder
    SERVER_HELLO_READ = "server_hello_read"  # initiator
    DONE = "done"
    FAILED = "failed"


def _iv(counter: int) -> bytes:
    # SPEC §3.4: 8 zero bytes || uint32_be(counter).
    return _IV_PREFIX + counter.to_bytes(4, "big")


def _hkdf64(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-SHA256(salt, ikm, info="", L=64) (RFC 5869; SPEC §3.4 MixKey and §3.5 Split)."""
    prk = hmac.digest(salt, ikm, "sha256")
    t1 = hmac.digest(prk, b"\x01", "sha256")
    return t1 + hmac.digest(prk, t1 + b"\x02", "sha256")


class TransportCipher:
    """One direction of the transport phase: AES-256-GCM, no AAD, IV from a counter from 0."""

    __slots__ = ("_aead", "counter", "key")

    def __init__(self, key: bytes, counter: int = 0) -> None:
        self.key = key
        self._aead = AESGCM(key)
        self.counter = counter

    def __repr__(self) -> str:  # never show key material
        return f"TransportCipher(counter={self.counter})"

    def _next_iv(self) -> bytes:
        n = self.counter
        if n > MAX_COUNTER:
            raise FrameError("transport counter exhausted", reason="counter_exhausted")
        self.counter = n + 1
        return _iv(n)

    def encrypt(self, plaintext: bytes) -> bytes:
        return self._aead.encrypt(self._next_iv(), plaintext, None)

    def decrypt(self, ciphertext: bytes) -> bytes:
        n = self.counter
        iv = self._next_iv()
        try:
            return self._aead.decrypt(iv, ciphertext, None)
        except InvalidTag:
            raise FrameError(
                "transport frame failed to authenticate", reason="decrypt_failed", counter=n
            ) from None


@dataclass(frozen=True, slots=True)
class NoiseTransport:
    """The two transport ciphers of one side after the split (SPEC §3.5 step 4)."""

    send: TransportCipher
    recv: TransportCipher


class _SymmetricState:
    """h, ck, k and the single handshake counter n (SPEC §3.3, §3.4)."""

    __slots__ = ("_aead", "ck", "h", "n")

    def __init__(self, prologue: bytes) -> None:
        self.h = NOISE_MODE
        self.ck = NOISE_MODE
        self._aead = AESGCM(NOISE_MODE)
        self.n = 0
        self.mix_hash(prologue)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        okm = _hkdf64(self.ck, ikm)
        self.ck = okm[:32]
        self._aead = AESGCM(okm[32:])
        self.n = 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        c = self._aead.encrypt(_iv(self.n), plaintext, self.h)
        self.n += 1
        self.mix_hash(c)
        return c

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        p = self._aead.decrypt(_iv(self.n), ciphertext, self.h)  # InvalidTag to the caller
        self.n += 1
        self.mix_hash(ciphertext)
        return p

    def split(self) -> tuple[bytes, bytes]:
        """(initiator send key, responder send key)."""
        okm = _hkdf64(self.ck, b"")
        return okm[:32], okm[32:]


# ------------------------------------------------------------------ certificate chain (§3.6)


@dataclass(frozen=True, slots=True)
class CertificateDetails:
    """`CertChain.NoiseCertificate.Details` of one certificate."""

    serial: int
    issuer_serial: int
    key: bytes
    not_before: int
    not_after: int


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """What the initiator learnt from a verified ServerHello."""

    static: bytes  # the server's static public key rs
    leaf: CertificateDetails
    intermediate: CertificateDetails


def _details_bytes(d: CertificateDetails) -> bytes:
    msg = CertChain.NoiseCertificate.Details(
        serial=d.serial,
        issuerSerial=d.issuer_serial,
        key=d.key,
        notBefore=d.not_before,
        notAfter=d.not_after,
    )
    return msg.SerializeToString()


def make_cert_chain(
    *,
    root_private: bytes,
    intermediate: KeyPair,
    server_static: bytes,
    not_before: int,
    not_after: int,
    intermediate_serial: int = 1,
    leaf_serial: int = 2,
) -> bytes:
    """A serialized `CertChain` for a responder (SPEC §3.6 "simulator implication").

    The intermediate (issuerSerial 0, key = intermediate.public) is signed by the root key, the
    leaf (issuerSerial = intermediate serial, key = the server static key) by the intermediate.
    """
    inter_details = _details_bytes(
        CertificateDetails(
            intermediate_serial, WA_CERT_ISSUER_SERIAL, intermediate.public, not_before, not_after
        )
    )
    leaf_details = _details_bytes(
        CertificateDetails(leaf_serial, intermediate_serial, server_static, not_before, not_after)
    )
    chain = CertChain(
        leaf=CertChain.NoiseCertificate(
            details=leaf_details, signature=curve.sign(intermediate.private, leaf_details)
        ),
        intermediate=CertChain.NoiseCertificate(
            details=inter_details, signature=curve.sign(root_private, inter_details)
        ),
    )
    return chain.SerializeToString()


def _cert_fail(reason: str, **details: object) -> HandshakeError:
    return HandshakeError(
        "server certificate rejected", step=HandshakeStep.CERTIFICATE, reason=reason, **details
    )


def _parse_details(raw: bytes, which: str) -> CertificateDetails:
    try:
        d = parse(CertChain.NoiseCertificate.Details, raw)
    except DecodeError as exc:
        raise _cert_fail("malformed_details", certificate=which, cause=dict(exc.details)) from None
    return CertificateDetails(d.serial, d.issuerSerial, d.key, d.notBefore, d.notAfter)


def verify_cert_chain(
    chain_bytes: bytes,
    *,
    server_static: bytes,
    now: float,
    trusted_root: bytes = WA_CERT_ROOT_PUBLIC_KEY,
) -> tuple[CertificateDetails, CertificateDetails]:
    """Check a serialized CertChain as whatsmeow's `verifyServerCert` does (SPEC §3.6).

    Returns (leaf, intermediate) details; raises `HandshakeError(step=CERTIFICATE, reason=…)`.
    """
    try:
        chain = parse(CertChain, chain_bytes)
    except DecodeError as exc:
        raise _cert_fail("malformed_chain", cause=dict(exc.details)) from None
    for which in ("leaf", "intermediate"):
        if not chain.HasField(which):
            raise _cert_fail("missing_certificate", certificate=which)
        cert = getattr(chain, which)
        if not (cert.HasField("details") and cert.HasField("signature")):
            raise _cert_fail("incomplete_certificate", certificate=which)
        if len(cert.signature) != SIGNATURE_LEN:
            raise _cert_fail("signature_length", certificate=which, length=len(cert.signature))
    if not curve.verify(trusted_root, chain.intermediate.details, chain.intermediate.signature):
        raise _cert_fail("intermediate_signature")
    inter = _parse_details(chain.intermediate.details, "intermediate")
    if inter.issuer_serial != WA_CERT_ISSUER_SERIAL:
        raise _cert_fail("intermediate_issuer_serial", issuer_serial=inter.issuer_serial)
    if len(inter.key) != KEY_LEN:
        raise _cert_fail("intermediate_key_length", length=len(inter.key))
    if not curve.verify(inter.key, chain.leaf.details, chain.leaf.signature):
        raise _cert_fail("leaf_signature")
    leaf = _parse_details(chain.leaf.details, "leaf")
    if leaf.issuer_serial != inter.serial:
        raise _cert_fail("leaf_issuer_serial", issuer_serial=leaf.issuer_serial)
    if leaf.key != server_static:
        raise _cert_fail("leaf_key_mismatch")
    for which, d in (("intermediate", inter), ("leaf", leaf)):
        if not d.not_before <= now <= d.not_after:
            raise _cert_fail(
                "validity", certificate=which, not_before=d.not_before, not_after=d.not_after
            )
    return leaf, inter


# ------------------------------------------------------------------ initiator (client)


class NoiseInitiator:
    """The client side: ClientHello → read ServerHello → ClientFinish + transport (SPEC §3.5).

    `noise_key` is the persistent static key (creds.noiseKey), `ephemeral` a fresh key pair per
    connection; `prologue` is the 4-byte WA header of the intro actually sent (never the ED
    prefix); `trusted_root` the key the server certificate chain must lead to.
    """

    __slots__ = ("_ephemeral", "_noise_key", "_re", "_root", "_ss", "state")

    def __init__(
        self,
        noise_key: KeyPair,
        ephemeral: KeyPair,
        *,
        prologue: bytes | None = None,
        trusted_root: bytes = WA_CERT_ROOT_PUBLIC_KEY,
    ) -> None:
        self._noise_key = noise_key
        self._ephemeral = ephemeral
        self._root = trusted_root
        self._ss = _SymmetricState(wa_header() if prologue is None else prologue)
        self._re = b""
        self.state = HandshakeState.START

    def _expect(self, state: HandshakeState, step: HandshakeStep) -> None:
        if self.state is not state:
            raise HandshakeError(
                "handshake step out of order", step=step, reason="wrong_state", state=self.state
            )

    def client_hello(self) -> bytes:
        """The serialized ClientHello `HandshakeMessage` (the first frame's payload)."""
        self._expect(HandshakeState.START, HandshakeStep.CLIENT_HELLO)
        self._ss.mix_hash(self._ephemeral.public)
        self.state = HandshakeState.HELLO_SENT
        msg = HandshakeMessage(
            clientHello=HandshakeMessage.ClientHello(ephemeral=self._ephemeral.public)
        )
        return msg.SerializeToString()

    def read_server_hello(self, message: bytes, *, now: float) -> ServerIdentity:
        """Process the ServerHello and verify the certificate chain at time `now`."""
        self._expect(HandshakeState.HELLO_SENT, HandshakeStep.SERVER_HELLO)
        self.state = HandshakeState.FAILED
        step = HandshakeStep.SERVER_HELLO
        hs = _parse_handshake(message, step)
        if not hs.HasField("serverHello"):
            raise HandshakeError("not a ServerHello", step=step, reason="missing_server_hello")
        sh = hs.serverHello
        if len(sh.ephemeral) != KEY_LEN:
            raise HandshakeError(
                "bad server ephemeral",
                step=step,
                reason="ephemeral_length",
                length=len(sh.ephemeral),
            )
        if not (sh.HasField("static") and sh.HasField("payload")):
            raise HandshakeError("ServerHello incomplete", step=step, reason="missing_fields")
        ss = self._ss
        try:
            ss.mix_hash(sh.ephemeral)
            ss.mix_key(curve.shared_key(self._ephemeral.private, sh.ephemeral))
            static = ss.decrypt_and_hash(sh.static)
            if len(static) != KEY_LEN:
                raise HandshakeError(
                    "bad server static", step=step, reason="static_length", length=len(static)
                )
            ss.mix_key(curve.shared_key(self._ephemeral.private, static))
            cert = ss.decrypt_and_hash(sh.payload)
        except InvalidTag:
            raise HandshakeError(
                "ServerHello failed to decrypt", step=step, reason="decrypt_failed"
            ) from None
        except CryptoError as exc:
            raise HandshakeError(
                "bad server key", step=step, reason="bad_key", cause=dict(exc.details)
            ) from None
        leaf, inter = verify_cert_chain(
            cert, server_static=static, now=now, trusted_root=self._root
        )
        self._re = sh.ephemeral
        self.state = HandshakeState.SERVER_HELLO_READ
        return ServerIdentity(static, leaf, inter)

    def client_finish(self, payload: bytes) -> tuple[bytes, NoiseTransport]:
        """The serialized ClientFinish carrying `payload` (a ClientPayload), and the transport."""
        self._expect(HandshakeState.SERVER_HELLO_READ, HandshakeStep.CLIENT_FINISH)
        ss = self._ss
        static = ss.encrypt_and_hash(self._noise_key.public)
        ss.mix_key(curve.shared_key(self._noise_key.private, self._re))
        encrypted = ss.encrypt_and_hash(payload)
        msg = HandshakeMessage(
            clientFinish=HandshakeMessage.ClientFinish(static=static, payload=encrypted)
        )
        send, recv = ss.split()
        self.state = HandshakeState.DONE
        return msg.SerializeToString(), NoiseTransport(TransportCipher(send), TransportCipher(recv))


# ------------------------------------------------------------------ responder (simulator)


@dataclass(frozen=True, slots=True)
class ClientFinished:
    """What the responder learnt from a ClientFinish."""

    client_static: bytes  # the client's noise key (public)
    payload: bytes  # the decrypted, serialized ClientPayload
    client_payload: ClientPayload = field(repr=False)
    transport: NoiseTransport = field(repr=False)


class NoiseResponder:
    """The server side: read ClientHello → ServerHello → read ClientFinish (SPEC §3.5).

    `static` is the server static key pair (certified by `cert_chain`, see `make_cert_chain`),
    `ephemeral` a fresh pair per connection, `prologue` the WA header the client's intro
    carried (`framing.Intro.header`).
    """

    __slots__ = ("_cert", "_ephemeral", "_re", "_ss", "_static", "state")

    def __init__(
        self,
        static: KeyPair,
        ephemeral: KeyPair,
        cert_chain: bytes,
        *,
        prologue: bytes | None = None,
    ) -> None:
        self._static = static
        self._ephemeral = ephemeral
        self._cert = cert_chain
        self._ss = _SymmetricState(wa_header() if prologue is None else prologue)
        self._re = b""
        self.state = HandshakeState.START

    def _expect(self, state: HandshakeState, step: HandshakeStep) -> None:
        if self.state is not state:
            raise HandshakeError(
                "handshake step out of order", step=step, reason="wrong_state", state=self.state
            )

    def read_client_hello(self, message: bytes) -> None:
        self._expect(HandshakeState.START, HandshakeStep.CLIENT_HELLO)
        self.state = HandshakeState.FAILED
        step = HandshakeStep.CLIENT_HELLO
        hs = _parse_handshake(message, step)
        if not hs.HasField("clientHello"):
            raise HandshakeError("not a ClientHello", step=step, reason="missing_client_hello")
        ephemeral = hs.clientHello.ephemeral
        if len(ephemeral) != KEY_LEN:
            raise HandshakeError(
                "bad client ephemeral", step=step, reason="ephemeral_length", length=len(ephemeral)
            )
        self._ss.mix_hash(ephemeral)
        self._re = ephemeral
        self.state = HandshakeState.HELLO_READ

    def server_hello(self) -> bytes:
        """The serialized ServerHello: e, ee, s, es and the encrypted certificate chain."""
        self._expect(HandshakeState.HELLO_READ, HandshakeStep.SERVER_HELLO)
        step = HandshakeStep.SERVER_HELLO
        ss = self._ss
        try:
            ss.mix_hash(self._ephemeral.public)
            ss.mix_key(curve.shared_key(self._ephemeral.private, self._re))
            static = ss.encrypt_and_hash(self._static.public)
            ss.mix_key(curve.shared_key(self._static.private, self._re))
        except CryptoError as exc:
            self.state = HandshakeState.FAILED
            raise HandshakeError(
                "bad client ephemeral", step=step, reason="bad_key", cause=dict(exc.details)
            ) from None
        payload = ss.encrypt_and_hash(self._cert)
        self.state = HandshakeState.SERVER_HELLO_SENT
        msg = HandshakeMessage(
            serverHello=HandshakeMessage.ServerHello(
                ephemeral=self._ephemeral.public, static=static, payload=payload
            )
        )
        return msg.SerializeToString()

    def read_client_finish(self, message: bytes) -> ClientFinished:
        self._expect(HandshakeState.SERVER_HELLO_SENT, HandshakeStep.CLIENT_FINISH)
        self.state = HandshakeState.FAILED
        step = HandshakeStep.CLIENT_FINISH
        hs = _parse_handshake(message, step)
        if not hs.HasField("clientFinish"):
            raise HandshakeError("not a ClientFinish", step=step, reason="missing_client_finish")
        cf = hs.clientFinish
        if not (cf.HasField("static") and cf.HasField("payload")):
            raise HandshakeError("ClientFinish incomplete", step=step, reason="missing_fields")
        ss = self._ss
        try:
            client_static = ss.decrypt_and_hash(cf.static)
            if len(client_static) != KEY_LEN:
                raise HandshakeError(
                    "bad client static",
                    step=step,
                    reason="static_length",
                    length=len(client_static),
                )
            ss.mix_key(curve.shared_key(self._ephemeral.private, client_static))
            payload = ss.decrypt_and_hash(cf.payload)
        except InvalidTag:
            raise HandshakeError(
                "ClientFinish failed to decrypt", step=step, reason="decrypt_failed"
            ) from None
        except CryptoError as exc:
            raise HandshakeError(
                "bad client static key", step=step, reason="bad_key", cause=dict(exc.details)
            ) from None
        try:
            client_payload = parse(ClientPayload, payload)
        except DecodeError as exc:
            raise HandshakeError(
                "ClientPayload does not parse",
                step=step,
                reason="bad_payload",
                cause=dict(exc.details),
            ) from None
        client_send, server_send = ss.split()
        self.state = HandshakeState.DONE
        transport = NoiseTransport(TransportCipher(server_send), TransportCipher(client_send))
        return ClientFinished(client_static, payload, client_payload, transport)


def _parse_handshake(message: bytes, step: HandshakeStep) -> HandshakeMessage:
    """Parse one handshake message; garbage is a HandshakeError naming the step."""
    try:
        return parse(HandshakeMessage, message)
    except DecodeError as exc:
        raise HandshakeError(
            "malformed handshake message", step=step, reason="malformed", cause=dict(exc.details)
        ) from None
