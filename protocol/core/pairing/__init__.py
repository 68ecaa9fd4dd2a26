"""Pairing crypto for both roles: the companion (our client) and the primary (the simulator).

Owns (SPEC §8, §9):
* `qr` — the QR payload string, the companion platform id, and a parser of both QR forms.
* `adv` — the ADV signed device identity: the companion's verification of `pair-success` and
  its device signature; the primary's identity, account signature and HMAC container.
* `link_code` — pairing with a phone number: the code, PBKDF2 + AES-CTR key wrapping, the
  AES-GCM key bundle and the adv secret, as pure step functions for each side.

Every step is a pure function: randomness arrives as `rng`, time as `now`; results are frozen
dataclasses that never show key material in their repr. Failures raise `PairingError` (with a
structured `reason`) or `DecodeError`. Takes and returns bytes, never binary nodes.

Must not import asyncio, socket, time, os, random, secrets or anything outside `protocol.core`.
"""
