"""Automatic certificates: an ACME client (RFC 8555) with HTTP-01 challenges (§8.3).

With C{[tls] acme = true} the server keeps its certificate (C{DATA_DIR/tls/cert.pem} and
C{key.pem}, the files every TLS listener loads) issued by the configured ACME directory for
the hostname and the C{autoconfig.} and C{mta-sts.} names of every local domain (and its
C{autodiscover.} name when the HTTPS listener is on):

  - L{ChallengeResource}, mounted at C{/.well-known/acme-challenge/} on the HTTP listener,
    answers the CA's validation requests with the key authorization (RFC 8555 §8.3);
  - L{CertificateKeeper.check} runs at start and then daily (a C{TimerService}): when the
    certificate is not from ACME yet, does not name every wanted name, or expires in less
    than L{RENEW_BEFORE} seconds, it orders a new one, writes it durably and hot-reloads it
    into every TLS listener (the SIGHUP path, C{MailServer.reload_tls});
  - a failure (CA unreachable, challenge invalid) is logged and the old certificate kept;
    the next daily check tries again.  When the order for every name fails and the current
    certificate is not good for the hostname either (self-signed, expiring), the hostname
    alone is ordered: an C{mta-sts.} record not yet published does not keep the mail
    listeners on a self-signed certificate.

The protocol work is the C{acme} library of the certbot project (synchronous, over
C{requests}): L{obtain} runs in the reactor's thread pool, never on the reactor thread.

State in C{DATA_DIR/acme/} (mode 0700): C{account.key} (the account's JWK, mode 0600),
C{account.json} (the account URL, RFC 8555 §7.3) and C{order.json} (the last order: URL,
names, status, time).  Every file is written to a temporary name, fsynced, renamed into
place and its directory fsynced; the new key and certificate replace the old ones in that
order, and a start after a crash between the two renames completes them
(L{complete_replacement}).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import josepy as jose
from acme import challenges, client, crypto_util, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from twistedmail.fsync import fsync_dir, write_file

log = Logger(namespace="twistedmail.acme")

CHALLENGE_PATH = (b".well-known", b"acme-challenge")
"""Where HTTP-01 validation requests arrive, RFC 8555 §8.3."""
RENEW_BEFORE = 30 * 86400
"""Seconds before expiry at which the certificate is renewed (Let's Encrypt's advice)."""
CHECK_INTERVAL = 86400.0
"""Seconds between two checks of the certificate (and one at start)."""
USER_AGENT = "twistedmail"
FINALIZE_TIMEOUT = 120  # seconds to wait for the CA's validation and the certificate


@attrs.frozen
class AcmeSettings:
    """What L{obtain} needs from C{[tls]}: the directory URL (RFC 8555 §7.1.1), the
    contact address (§7.3) and the CA certificates to trust for the directory's HTTPS
    (C{None}: the system's)."""

    directory: str
    contact: str
    ca: Path | None = None


def wanted_names(hostname: str, domains: Sequence[str], https: bool = False) -> list[str]:
    """The names the certificate must carry: the hostname first (the subject), then
    C{autoconfig.D} and C{mta-sts.D} for every local domain D, without duplicates.

    @param https: the HTTPS listener is on: C{autodiscover.D} too, which Outlook asks over
        HTTPS only (C{https://autodiscover.D/autodiscover/autodiscover.xml})."""
    names = [hostname.lower().rstrip(".")]
    labels = ("autoconfig.", "autodiscover.", "mta-sts.") if https else ("autoconfig.", "mta-sts.")
    for domain in sorted(domains):
        for label in labels:
            name = label + domain.lower().rstrip(".")
            if name not in names:
                names.append(name)
    return names


def renewal_reason(cert_pem: bytes | None, names: Sequence[str], now: float) -> str | None:
    """Why a new certificate is needed, or C{None} when C{cert_pem} will do.

    @param now: POSIX seconds (the injected clock).
    """
    if cert_pem is None:
        return "no certificate"
    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        return "the certificate cannot be read"
    if cert.issuer == cert.subject:
        return "the certificate is self-signed"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        present = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    except x509.ExtensionNotFound:
        present = set()
    missing = [n for n in names if n not in present]
    if missing:
        return f"the certificate does not name {', '.join(missing)}"
    left = cert.not_valid_after_utc.timestamp() - now
    if left < RENEW_BEFORE:
        return f"the certificate expires in {left / 86400:.1f} days"
    return None


def write_durably(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write C{path} whole or not at all: a temporary file, fsync, rename, fsync the
    directory.  Blocking: call it in a thread."""
    tmp = path.with_name(path.name + ".tmp")
    write_file(tmp, data, exclusive=False)  # every byte (one os.write may write fewer)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _new_suffix(path: Path) -> Path:
    return path.with_name(path.name + ".new")


def install_pair(cert_path: Path, key_path: Path, fullchain_pem: bytes, key_pem: bytes) -> None:
    """Replace the certificate and key: both written durably under C{.new} names, then
    renamed key first, certificate second (see L{complete_replacement})."""
    write_durably(_new_suffix(key_path), key_pem, 0o600)
    write_durably(_new_suffix(cert_path), fullchain_pem)
    complete_replacement(cert_path, key_path)


def complete_replacement(cert_path: Path, key_path: Path) -> None:
    """Finish an L{install_pair} a crash interrupted: a C{cert.pem.new} left means both
    new files were written, so each C{.new} file still there is renamed into place."""
    new_cert = _new_suffix(cert_path)
    if not new_cert.exists():
        _new_suffix(key_path).unlink(missing_ok=True)  # the crash came before the pair
        return
    new_key = _new_suffix(key_path)
    if new_key.exists():
        os.replace(new_key, key_path)
        fsync_dir(key_path.parent)
    os.replace(new_cert, cert_path)
    fsync_dir(cert_path.parent)


class ChallengeResource(Resource):
    """C{/.well-known/acme-challenge/TOKEN}: the key authorization of a pending HTTP-01
    challenge as C{text/plain} (RFC 8555 §8.3), 404 for any other token.

    L{publish} and L{withdraw} are called from the thread running L{obtain}: each is one
    dict operation (atomic in CPython), read by the reactor thread.  Not handed over with
    C{blockingCallFromThread}: during shutdown the reactor thread joins the pool's threads
    and a thread waiting for it would never return.
    """

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[bytes, bytes] = {}

    def publish(self, token: bytes, key_authorization: bytes) -> None:
        self.answers[token] = key_authorization

    def withdraw(self, token: bytes) -> None:
        self.answers.pop(token, None)

    def getChild(self, path: bytes, request: Any) -> IResource:
        return _KeyAuthorization(self.answers.get(path))

    def render(self, request: Any) -> bytes:
        return _KeyAuthorization(None).render(request)


class _KeyAuthorization(Resource):
    isLeaf = True

    def __init__(self, answer: bytes | None) -> None:
        super().__init__()
        self.answer = answer

    def render_GET(self, request: Request) -> bytes:
        if self.answer is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain")
            return b"Not Found\n"
        request.setHeader(b"content-type", b"text/plain")
        return self.answer


class StateDir:
    """C{DATA_DIR/acme/}: the account key and URL, the last order (module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def account_key(self) -> jose.JWKRSA:
        """The account key, created (RSA 2048, mode 0600) on first use.  Blocking."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path = self.path / "account.key"
        if key_path.exists():
            return jose.JWKRSA.json_loads(key_path.read_text())
        key = jose.JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
        write_durably(key_path, key.json_dumps().encode(), 0o600)
        return key

    def registration(self, directory: str) -> messages.RegistrationResource | None:
        """The account registered at C{directory}, or C{None}: an account belongs to one
        CA, so after C{acme_directory} changed (staging to production) a new one is made."""
        path = self.path / "account.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        if data.get("version") != 1 or data.get("directory") != directory:
            return None
        regr: messages.RegistrationResource = messages.RegistrationResource.from_json(
            data["registration"]
        )
        return regr

    def save_registration(self, directory: str, regr: messages.RegistrationResource) -> None:
        record = {"version": 1, "directory": directory, "registration": regr.to_json()}
        write_durably(self.path / "account.json", json.dumps(record, indent=1).encode(), 0o600)

    def save_order(self, url: str | None, names: Sequence[str], status: str, at: float) -> None:
        record = {"version": 1, "url": url, "names": list(names), "status": status, "at": at}
        write_durably(self.path / "order.json", json.dumps(record, indent=1).encode(), 0o600)


def _network(settings: AcmeSettings, key: jose.JWKRSA) -> client.ClientNetwork:
    verify: bool | str = str(settings.ca) if settings.ca is not None else True
    # verify_ssl goes to requests' verify=, which also takes a CA bundle's path
    return client.ClientNetwork(key, user_agent=USER_AGENT, verify_ssl=verify)  # type: ignore[arg-type]


def obtain(
    settings: AcmeSettings,
    state: StateDir,
    names: Sequence[str],
    publish: Callable[[bytes, bytes], None],
    withdraw: Callable[[bytes], None],
    now: float,
) -> tuple[bytes, bytes]:
    """Order a certificate for C{names} and answer its HTTP-01 challenges (RFC 8555 §7.4,
    §8.3), registering the account first when C{state} has none (§7.3).  Blocking: run it
    in a thread; C{publish}/C{withdraw} must be safe to call from that thread.

    @return: (the certificate chain, its new key), PEM.
    @raise Exception: whatever the network or the CA answered (the caller logs it).
    """
    key = state.account_key()
    net = _network(settings, key)
    directory = client.ClientV2.get_directory(settings.directory, net)
    acme = client.ClientV2(directory, net)
    regr = state.registration(settings.directory)
    if regr is None:
        regr = acme.new_account(
            messages.NewRegistration.from_data(email=settings.contact, terms_of_service_agreed=True)
        )
        state.save_registration(settings.directory, regr)
        log.info("ACME account registered: {url}", url=regr.uri)
    else:
        net.account = regr
    cert_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_pem = cert_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    order = acme.new_order(crypto_util.make_csr(key_pem, list(names)))
    state.save_order(order.uri, names, "pending", now)
    tokens: list[bytes] = []
    try:
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue  # an authorization the CA reused (RFC 8555 §7.1.4)
            chall = next(
                (c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)),
                None,
            )
            if chall is None:
                raise ValueError(f"no http-01 challenge offered for {authz.body.identifier.value}")
            response, validation = chall.response_and_validation(key)
            token = chall.chall.encode("token").encode("ascii")
            publish(token, validation.encode("ascii"))
            tokens.append(token)
            acme.answer_challenge(chall, response)
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=FINALIZE_TIMEOUT)
        order = acme.poll_and_finalize(order, deadline)
    except Exception:
        state.save_order(order.uri, names, "failed", now)
        raise
    finally:
        for token in tokens:
            withdraw(token)
    state.save_order(order.uri, names, "valid", now)
    return order.fullchain_pem.encode("ascii"), key_pem


class CertificateKeeper:
    """Keeps the server certificate issued and current (module docstring).

    @ivar challenges: the resource to mount at L{CHALLENGE_PATH}.
    """

    def __init__(
        self,
        settings: AcmeSettings,
        state: StateDir,
        cert_path: Path,
        key_path: Path,
        names: Callable[[], Sequence[str]],
        reload: Callable[[], Awaitable[bool]],
        reactor: IReactorTime,
        run_in_thread: Callable[..., defer.Deferred[Any]],
    ) -> None:
        """@param names: the names wanted now (L{wanted_names}; domains come and go).
        @param reload: loads C{cert_path}/C{key_path} into every TLS listener, says if
            it did (C{MailServer.reload_tls}).
        @param reactor: the clock of the expiry check and where C{run_in_thread} returns.
        """
        self.settings = settings
        self.state = state
        self.cert_path = cert_path
        self.key_path = key_path
        self.names = names
        self.reload = reload
        self.reactor = reactor
        self.run_in_thread = run_in_thread
        self.challenges = ChallengeResource()
        self._running: defer.Deferred[bool] | None = None

    def check(self) -> defer.Deferred[bool]:
        """Renew when needed (L{renewal_reason}); never fails (errors are logged).  A check
        while one runs does nothing.

        @return: whether a new certificate was installed and loaded.
        """
        if self._running is not None:
            return defer.succeed(False)
        d = defer.Deferred.fromCoroutine(self._check())

        def done(result: bool) -> bool:
            self._running = None
            return result

        self._running = d
        d.addBoth(done)
        return d

    async def _check(self) -> bool:
        try:
            names = list(self.names())
            current = await self.run_in_thread(_read_or_none, self.cert_path)
            reason = renewal_reason(current, names, self.reactor.seconds())
            if reason is None:
                return False
            log.info(
                "ACME: ordering a certificate for {names} from {directory}: {reason}",
                names=" ".join(names),
                directory=self.settings.directory,
                reason=reason,
            )
            try:
                fullchain, key = await self._obtain(names)
            except Exception as e:
                # One name not pointing here fails the whole order (RFC 8555 §7.1.6); the
                # hostname alone is worth having while the current one is not good for it.
                if (
                    len(names) == 1
                    or renewal_reason(current, names[:1], self.reactor.seconds()) is None
                ):
                    raise
                log.error(
                    "ACME: the order for every name failed, ordering {hostname} alone: {error}",
                    hostname=names[0],
                    error=_describe(e),
                )
                fullchain, key = await self._obtain(names[:1])
            await self.run_in_thread(install_pair, self.cert_path, self.key_path, fullchain, key)
        except Exception as e:
            log.error(
                "ACME: no new certificate, keeping the current one: {error}",
                error=_describe(e),
            )
            return False
        expires = x509.load_pem_x509_certificates(fullchain)[0].not_valid_after_utc
        log.info("ACME: new certificate, valid until {expires}", expires=expires.isoformat())
        return await self.reload()

    async def _obtain(self, names: Sequence[str]) -> tuple[bytes, bytes]:
        result: tuple[bytes, bytes] = await self.run_in_thread(
            obtain,
            self.settings,
            self.state,
            names,
            self.challenges.publish,
            self.challenges.withdraw,
            self.reactor.seconds(),
        )
        return result


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _describe(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= 500 else text[:500] + "..."
