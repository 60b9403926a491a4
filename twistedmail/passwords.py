"""Password hashing: hash, verify and rehash decisions (passlib CryptContext); pure, no I/O.

New hashes are argon2id.  Verification also accepts hashes imported from other servers:
bcrypt (C{$2y$}), SHA512-CRYPT (C{$6$}), SSHA/SSHA512 (C{{SSHA}...}), each with or without a
Dovecot-style C{{SCHEME}} prefix (Dovecot's doc "Password Schemes").  Verification costs
tens to hundreds of milliseconds: callers run it off the reactor thread.
"""

from __future__ import annotations

from passlib.context import CryptContext

_CONTEXT = CryptContext(
    schemes=["argon2", "bcrypt", "sha512_crypt", "ldap_salted_sha1", "ldap_salted_sha512"],
    default="argon2",
    argon2__type="ID",
    deprecated=["bcrypt", "sha512_crypt", "ldap_salted_sha1", "ldap_salted_sha512"],
)

# Dovecot scheme prefixes whose hash passlib knows without the prefix.
_STRIPPED_PREFIXES = ("{ARGON2ID}", "{ARGON2I}", "{BLF-CRYPT}", "{SHA512-CRYPT}", "{CRYPT}")


def _native(stored: str) -> str:
    upper = stored.upper()
    for prefix in _STRIPPED_PREFIXES:
        if upper.startswith(prefix):
            return stored[len(prefix) :]
    return stored  # {SSHA}/{SSHA512} are passlib's own ldap_salted_* formats


def hash_password(password: str) -> str:
    """Return an argon2id hash of C{password} (PHC string format)."""
    return _CONTEXT.hash(password)


_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2x$", "$2y$")
_BCRYPT_MAX_BYTES = 72


def verify(password: str, stored: str) -> bool:
    """Whether C{password} matches C{stored}; C{False} for an unknown or malformed hash.

    bcrypt uses the first 72 octets of the password only: other implementations (Dovecot's
    BLF-CRYPT, PHP) truncate silently, while the C{bcrypt} package refuses longer input, so the
    secret is truncated here to keep imported hashes of long passwords working.
    """
    native = _native(stored)
    secret: str | bytes = password
    if native.startswith(_BCRYPT_PREFIXES):
        secret = password.encode("utf-8")[:_BCRYPT_MAX_BYTES]
    try:
        return bool(_CONTEXT.verify(secret, native))
    except (ValueError, TypeError):
        return False


def needs_rehash(stored: str) -> bool:
    """Whether C{stored} should be replaced by a fresh default hash after a successful login."""
    try:
        return bool(_CONTEXT.needs_update(_native(stored))) or _native(stored) != stored
    except (ValueError, TypeError):
        return True
