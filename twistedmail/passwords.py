"""Password hashing: hash, verify and rehash decisions (passlib CryptContext); pure, no I/O.

New hashes are argon2id.  Verification also accepts hashes imported from other servers:
bcrypt (C{$2y$}), SHA512-CRYPT (C{$6$}), SSHA/SSHA512 (C{{SSHA}...}), each with or without a
Dovecot-style C{{SCHEME}} prefix (Dovecot's doc "Password Schemes").  Verification costs
tens to hundreds of milliseconds: callers run it off the reactor thread.

Argon2id parameters of new hashes (issue 10): m = 64 MiB (65536 KiB), t = 3 passes, p = 1
lane -- exactly what Dovecot writes for C{ARGON2ID} (C{doveadm pw -s ARGON2ID}, Dovecot
2.3.19 with libsodium: C{m=65536,t=3,p=1}), so a login here costs no more than one there.

 - RFC 9106 §4 recommends t=1, m=2 GiB, p=4 first, and for memory-constrained uses its
   second option t=3, m=64 MiB, p=4.  We keep that option's memory and passes; p=1 instead
   of 4 does the same work (Argon2's cost is m x t blocks, whatever the lanes) in one
   thread, so the hashes that run at once (L{twistedmail.auth}, C{[auth]
   max_parallel_hashes}) never oversubscribe the CPUs, and memory per hash stays 64 MiB.
 - OWASP's Password Storage Cheat Sheet asks for at least m=19 MiB, t=2, p=1 (or
   equivalent trades such as m=46 MiB, t=1); ours is about 5 times that work and 3.4 times
   that memory, well above the minimum.
 - The default of libpass (m=64 MiB, t=3, p=4, written by earlier versions) costs the same
   CPU but four threads per hash; such hashes keep verifying and are rewritten with these
   parameters at the next successful login (L{needs_rehash}, libpass C{needs_update}).
"""

from __future__ import annotations

from passlib.context import CryptContext

ARGON2_MEMORY_KIB = 65536  # m: 64 MiB, RFC 9106 §4 second option, Dovecot's ARGON2ID
ARGON2_PASSES = 3  # t
ARGON2_LANES = 1  # p: one thread per hash (Dovecot/libsodium: 1; RFC 9106 §4: 4)

_CONTEXT = CryptContext(
    schemes=["argon2", "bcrypt", "sha512_crypt", "ldap_salted_sha1", "ldap_salted_sha512"],
    default="argon2",
    argon2__type="ID",
    argon2__memory_cost=ARGON2_MEMORY_KIB,
    argon2__rounds=ARGON2_PASSES,
    argon2__parallelism=ARGON2_LANES,
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
    """Return an argon2id hash of C{password} (PHC string format, m=65536,t=3,p=1)."""
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
