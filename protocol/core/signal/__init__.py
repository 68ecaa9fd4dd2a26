"""The Signal protocol as WhatsApp uses it (SPEC §10), byte-exact with libsignal-node 6.0.0
and Baileys' sender-key port.

Owns: kdf (deriveSecrets, chain and message keys), keys (identity, registration id, signed and
one-time prekeys, bundles), messages (msg / pkmsg / skmsg / SKDM parse and encode), cipher
(AES-256-CBC + PKCS#7), session (X3DH both ways, Double Ratchet, session records), sender_keys
(group sender-key records, distribution, encrypt/decrypt).

Everything is a pure function over immutable records: callers pass `rng` and get back a new
record plus the result; on error nothing they hold has changed. Loading and storing records
(atomically, with prekey consumption) is `protocol.signal_store`'s job, not this package's.

Must not import: protocol.store, protocol.signal_store, protocol.aio, or any I/O (see
protocol.core).

Entry points: `session.initiate`, `session.encrypt`, `session.decrypt_whisper`,
`messages.parse_prekey_whisper` + `session.decrypt_prekey_whisper`, `sender_keys.create`,
`sender_keys.distribution_message`, `sender_keys.process_distribution`,
`sender_keys.encrypt`, `sender_keys.decrypt`.
"""
