"""The Sender Rewriting Scheme for forwarded mail (SRS, Shevek's "Guarded" scheme, as
libsrs2, postsrsd and Postfix setups use it), and ARC sealing of what is forwarded
(RFC 8617).

Mail that an alias (or a Sieve redirect) sends on to an outside address keeps its content,
but its envelope sender would be the original one, in a domain whose SPF record does not
name us: the next hop sees an SPF fail (RFC 7208 §2.4 checks the MAIL FROM domain).  So the
reverse-path is rewritten into one of our domains, C{SRS0=HHHH=TT=orig.domain=user@ours}
(C{HHHH}: an HMAC-SHA1 of the rest under our secret, base64, 4 characters; C{TT}: the day,
base 32, modulo 1024); an SRS0 sender (we are a later hop) becomes C{SRS1=...}.  A bounce
to such an address comes back to us; L{SenderRewriting.reverse} checks the hash and the age
(at most L{MAX_AGE_DAYS} days) and gives the address to send it on to.  A forged or expired
SRS address is refused at RCPT with C{550 5.1.1} (as Postfix does when postsrsd cannot
reverse it: the address is then an unknown user).

The format is C{srslib}'s (the same as libsrs2's); the secret is 32 random octets in
C{DATA_DIR/srs.secret}, mode 0600, made by the data dir's owner on first use.

ARC (RFC 8617 §5.1): the forwarded copy gets an ARC set (ARC-Authentication-Results from
our inbound C{Authentication-Results}, ARC-Message-Signature, ARC-Seal) signed with the
forwarding domain's DKIM key (L{twistedmail.dkim.KeyStore}), so that a receiver that
trusts us can accept the message despite the broken SPF (and a DKIM signature broken by
nothing: we change no content).
"""

from __future__ import annotations

import os
import re
import secrets
from contextlib import suppress
from pathlib import Path

import dkim as dkimpy
import srslib
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from twistedmail.address import AddressError, Mailbox
from twistedmail.dkim import RSA, KeyStore, _dkimpy_private_key
from twistedmail.fsync import fsync_dir, write_file

log = Logger(namespace="twistedmail.srs")

MAX_AGE_DAYS = 21
"""Days an SRS0 address can be reversed (libsrs2's and postsrsd's default)."""
SECRET_FILE = "srs.secret"
_SRS_LOCAL = re.compile(r"srs[01][-+=]", re.I)


class SRSError(Exception):
    """An address that looks like SRS but is forged, expired or malformed."""


def load_secret(path: Path) -> bytes:
    """The secret in C{path}, made (32 random octets, hex, mode 0600) if missing.

    @raise OSError: it cannot be read or made."""
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    secret = secrets.token_hex(32).encode("ascii")
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write_file(tmp, secret + b"\n")
        with suppress(FileExistsError):
            os.link(tmp, path)  # never replace a secret another process or thread made meanwhile
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)  # the addresses made with it must stay reversible after a crash
    return path.read_bytes().strip()


def is_srs(mailbox: Mailbox) -> bool:
    """Whether C{mailbox}'s local part is an SRS0 or SRS1 one."""
    return bool(_SRS_LOCAL.match(mailbox.local))


class SenderRewriting:
    """SRS forward and reverse with one secret.

    @param secret_path: the file of the HMAC key (L{load_secret}), read (or made) on first
        use: after twistd's privilege drop, so it belongs to the data dir's owner.
    @param clock: the time of the timestamps.
    @param max_age: days an SRS0 address stays valid.
    """

    def __init__(self, secret_path: Path, clock: IReactorTime, max_age: int = MAX_AGE_DAYS) -> None:
        self.secret_path = secret_path
        self.clock = clock
        self.max_age = max_age
        self._loaded: srslib.SRS | None = None

    @property
    def _srs(self) -> srslib.SRS:
        """@raise OSError: the secret cannot be read or made."""
        if self._loaded is None:
            srs = srslib.SRS(load_secret(self.secret_path), validity_days=self.max_age)
            srs._time_fn = self.clock.seconds  # srslib's seam for the time of day
            self._loaded = srs
        return self._loaded

    def forward(self, sender: Mailbox, domain: str) -> Mailbox | None:
        """The SRS0 (or, for an SRS sender, SRS1) address for C{sender} in C{domain};
        C{None} when it would not be a valid address (a quoted or literal sender, or a
        local part over 64 octets, RFC 5321 §4.5.3.1.1)."""
        if sender.quoted or sender.literal:
            return None
        try:
            return Mailbox.parse(self._srs.forward(str(sender), domain))
        except (AddressError, srslib.Error):
            return None
        except OSError as e:
            log.error("srs: secret {path}: {error}", path=str(self.secret_path), error=str(e))
            return None

    def reverse(self, address: Mailbox) -> Mailbox:
        """The address a message to the SRS C{address} goes on to: the original sender
        (SRS0), or the first hop's SRS0 address (SRS1).

        @raise SRSError: a bad hash, an expired or bad timestamp, a malformed address.
        @raise OSError: the secret cannot be read or made."""
        try:
            return Mailbox.parse(self._srs.reverse(str(address)))
        except (srslib.Error, AddressError) as e:
            raise SRSError(str(e)) from None


def arc_seal(message: bytes, keys: KeyStore, domain: str, authserv_id: str) -> bytes:
    """C{message} with an ARC set (RFC 8617 §5.1) on top, signed by C{domain}'s newest RSA
    DKIM key, its ARC-Authentication-Results copied from our C{Authentication-Results}
    (C{authserv_id}, RFC 8617 §4.1.1).  Unchanged (and logged) when the domain has no key,
    the message carries no Authentication-Results of ours, or an earlier ARC set whose
    validation we did not record (dkimpy then ends the chain, RFC 8617 §5.1.1).  Blocking:
    call it in a thread."""
    key = keys.signing_key(domain)
    if key is None or key.algorithm != RSA:
        log.info("arc: no DKIM key for {domain}: not sealed", domain=domain)
        return message
    try:
        fields = dkimpy.arc_sign(
            message,
            key.selector.encode("ascii"),
            key.domain.encode("ascii"),
            _dkimpy_private_key(key),
            authserv_id.encode("ascii"),
            linesep=b"\r\n",
        )
    except Exception:
        log.failure("arc: not sealed for {domain}", domain=domain)
        return message
    if not fields:
        log.info("arc: no Authentication-Results of ours to seal for {domain}", domain=domain)
        return message
    return b"".join(fields) + message


class Forwarding:
    """What forwarded mail leaves with (L{twistedmail.delivery.LocalDelivery.forwarded}).

    @param srs: rewrites the sender (C{[forwarding] srs}); C{None}: the sender is kept.
    @param keys: the DKIM keys that seal (C{[forwarding] arc}); C{None}: no ARC set.
    @param authserv_id: our hostname, the authserv-id of our Authentication-Results.
    @param srs_domain: the domain SRS addresses are in (C{[forwarding] srs_domain});
        C{""}: the local domain the message is forwarded through (the alias's).
    """

    def __init__(
        self,
        srs: SenderRewriting | None,
        keys: KeyStore | None,
        authserv_id: str,
        srs_domain: str = "",
    ) -> None:
        self.srs = srs
        self.keys = keys
        self.authserv_id = authserv_id
        self.srs_domain = srs_domain

    def prepare(self, sender: Mailbox, via: str | None, message: bytes) -> tuple[Mailbox, bytes]:
        """The SRS sender and the sealed message for C{sender}'s message forwarded through
        the local domain C{via}.  Blocking (the seal's RSA signature): call it in a thread."""
        domain = self.srs_domain or via
        if domain is None:
            return sender, message
        rewritten = self.srs.forward(sender, domain) if self.srs is not None else None
        if self.keys is not None:
            message = arc_seal(message, self.keys, via or domain, self.authserv_id)
        if rewritten is None:
            if self.srs is not None:
                log.warn(
                    "srs: <{sender}> cannot be rewritten (quoted, literal or too long);"
                    " forwarded with the original sender",
                    sender=str(sender),
                )
            return sender, message
        log.info(
            "srs: forwarded from <{sender}> as <{srs}>", sender=str(sender), srs=str(rewritten)
        )
        return rewritten, message
