"""Tests for L{twistedmail.passwords}: argon2id by default; verification of hashes imported from
other servers (bcrypt, SHA512-CRYPT, SSHA, Dovecot C{{SCHEME}} prefixes); rehash decisions."""

from __future__ import annotations

import base64
import hashlib

import bcrypt
from argon2 import PasswordHasher, Type
from passlib.hash import ldap_salted_sha1, ldap_salted_sha512, sha512_crypt
from twisted.trial import unittest

from twistedmail.passwords import hash_password, needs_rehash, verify

PASSWORD = "correct horse battery stäple"


def bcrypt_hash(password: str, prefix: bytes = b"2b") -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4, prefix=prefix)).decode()


def ssha(password: str, salt: bytes, digest: str = "sha1") -> str:
    """Build an LDAP/Dovecot C{{SSHA}} hash by hand: base64(H(password + salt) + salt)."""
    raw = hashlib.new(digest, password.encode() + salt).digest() + salt
    scheme = "{SSHA}" if digest == "sha1" else "{SSHA512}"
    return scheme + base64.b64encode(raw).decode()


class DefaultSchemeTests(unittest.TestCase):
    def test_argon2id(self) -> None:
        """New hashes are argon2id v19; the right password verifies, another or '' does not, and
        no rehash is needed."""
        stored = hash_password(PASSWORD)
        self.assertTrue(stored.startswith("$argon2id$v=19$"))
        self.assertTrue(verify(PASSWORD, stored))
        self.assertFalse(verify(PASSWORD + "x", stored))
        self.assertFalse(verify("", stored))
        self.assertFalse(needs_rehash(stored))

    def test_salted(self) -> None:
        """Two hashes of the same password differ (random salt)."""
        self.assertNotEqual(hash_password(PASSWORD), hash_password(PASSWORD))

    def test_parameters_are_dovecots(self) -> None:
        """New hashes use m=64 MiB, t=3, p=1: what Dovecot's ARGON2ID writes (RFC 9106 §4)."""
        self.assertIn("$m=65536,t=3,p=1$", hash_password(PASSWORD))

    def test_dovecot_argon2id_hash_is_current(self) -> None:
        """A hash made by C{doveadm pw -s ARGON2ID} verifies and needs no rehash."""
        dovecot = (
            "$argon2id$v=19$m=65536,t=3,p=1$a0FhAcOoeBdfGTAhTADeJA"
            "$r528MEqw/+hKigkHeL89RFVQoozblqZkuSFtzjSlhr0"
        )
        self.assertTrue(verify("secret", dovecot))
        self.assertFalse(needs_rehash(dovecot))

    def test_old_default_parameters_rehashed(self) -> None:
        """A hash with the earlier default (m=64 MiB, t=3, p=4) verifies and is rehashed."""
        old = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=4, type=Type.ID).hash("pw")
        self.assertTrue(verify("pw", old))
        self.assertTrue(needs_rehash(old))

    def test_weak_argon2_parameters_rehashed(self) -> None:
        """An argon2id hash with weaker parameters verifies and asks for a rehash."""
        weak = PasswordHasher(time_cost=1, memory_cost=4096, parallelism=1, type=Type.ID).hash("pw")
        self.assertTrue(verify("pw", weak))
        self.assertTrue(needs_rehash(weak))

    def test_argon2i_rehashed(self) -> None:
        """An argon2i hash verifies and asks for a rehash to argon2id."""
        stored = PasswordHasher(type=Type.I).hash("pw")
        self.assertTrue(verify("pw", stored))
        self.assertTrue(needs_rehash(stored))


class ImportedSchemeTests(unittest.TestCase):
    """Every imported scheme verifies and asks to be rehashed to argon2id after a login."""

    def check(self, stored: str, password: str = PASSWORD) -> None:
        self.assertTrue(verify(password, stored), stored)
        self.assertFalse(verify(password + "!", stored), stored)
        self.assertFalse(verify(password[:-1], stored), stored)
        self.assertTrue(needs_rehash(stored), stored)

    def test_bcrypt_2b(self) -> None:
        """An imported bcrypt $2b$ hash verifies only the right password and asks for a rehash."""
        stored = bcrypt_hash(PASSWORD, b"2b")
        self.assertTrue(stored.startswith("$2b$04$"))
        self.check(stored)

    def test_bcrypt_2y(self) -> None:
        """C{$2y$} (PHP, Dovecot) is the same algorithm as C{$2b$}."""
        stored = "$2y$" + bcrypt_hash(PASSWORD)[4:]
        self.check(stored)

    def test_bcrypt_2a(self) -> None:
        """An imported bcrypt $2a$ hash verifies only the right password and asks for a rehash."""
        self.check(bcrypt_hash(PASSWORD, b"2a"))

    def test_dovecot_blf_crypt(self) -> None:
        """Dovecot's {BLF-CRYPT} prefix (any case) with $2y$ bcrypt verifies."""
        self.check("{BLF-CRYPT}$2y$" + bcrypt_hash(PASSWORD)[4:])
        self.check("{blf-crypt}" + bcrypt_hash(PASSWORD))

    def test_bcrypt_long_password(self) -> None:
        """Regression: bcrypt reads 72 octets; Dovecot and PHP truncate, the bcrypt package
        raised ValueError, so a long password imported from Dovecot could never log in."""
        long_password = "p" * 72
        stored = bcrypt_hash(long_password)
        self.assertTrue(verify("p" * 100, stored))
        self.assertTrue(verify(long_password, stored))
        self.assertFalse(verify("p" * 71, stored))
        self.assertFalse(verify("p" * 71 + "q" * 10, stored))

    def test_sha512_crypt(self) -> None:
        """SHA512-CRYPT ($6$), bare or with Dovecot's {SHA512-CRYPT} or {CRYPT} prefix, verifies."""
        stored = sha512_crypt.using(rounds=5000).hash(PASSWORD)
        self.assertTrue(stored.startswith("$6$"))
        self.check(stored)
        self.check("{SHA512-CRYPT}" + stored)
        self.check("{CRYPT}" + stored)

    def test_sha512_crypt_known_vector(self) -> None:
        """The glibc test vector (Drepper's SHA-crypt specification)."""
        stored = (
            "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJu"
            "esI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
        )
        self.check(stored, "Hello world!")

    def test_ssha(self) -> None:
        """Salted SHA-1 ({SSHA}) from Dovecot or LDAP verifies."""
        self.check(ssha(PASSWORD, b"\x01\x02\x03\x04"))
        self.check(ldap_salted_sha1.hash(PASSWORD))

    def test_ssha512(self) -> None:
        """Salted SHA-512 ({SSHA512}) from Dovecot or LDAP verifies."""
        self.check(ssha(PASSWORD, b"saltsalt", "sha512"))
        self.check(ldap_salted_sha512.hash(PASSWORD))

    def test_dovecot_argon2id_prefix(self) -> None:
        """C{{ARGON2ID}}: verifies; rehashed once so the store holds the plain PHC string."""
        native = hash_password(PASSWORD)
        self.check("{ARGON2ID}" + native)
        self.assertFalse(needs_rehash(native))

    def test_dovecot_argon2i_prefix(self) -> None:
        """Dovecot's {ARGON2I} prefix before an argon2i hash verifies."""
        self.check("{ARGON2I}" + PasswordHasher(type=Type.I).hash(PASSWORD))


class MalformedTests(unittest.TestCase):
    def test_unknown_or_malformed(self) -> None:
        """Never an exception: C{False}, and a rehash is due (the hash is unusable)."""
        for stored in (
            "",
            "garbage",
            "{PLAIN}secret",
            "{MD5}abc",
            "$2b$04$short",
            "$6$",
            "{SSHA}!!!",
            "{ARGON2ID}",
            "$argon2id$v=19$broken",
        ):
            self.assertFalse(verify("secret", stored), stored)
            self.assertTrue(needs_rehash(stored), stored)

    def test_plaintext_never_accepted(self) -> None:
        """A stored plaintext password, bare or {PLAIN}, never verifies."""
        self.assertFalse(verify("secret", "secret"))
        self.assertFalse(verify("{PLAIN}secret", "{PLAIN}secret"))
