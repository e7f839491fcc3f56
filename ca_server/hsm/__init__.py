"""CA keys that never leave a hardware security module: RFC 7512 key URIs (`uri`), the PIN
(`pin`), one logged-in PKCS#11 session per process that signs and reconnects (`token`), the
HSM keys behind pyca/cryptography's key interfaces (`keys`), key generation with the
attributes that keep a key inside the HSM (`generate`) and the errors they raise (`errors`).

The binding, python-pkcs11, is imported only when a `pkcs11:` key is configured, so a CA
with file keys never loads it (docs/HSM.md says why this binding).
"""
