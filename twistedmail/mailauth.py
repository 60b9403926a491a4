"""Inbound message authentication: SPF (RFC 7208), DKIM verification (RFC 6376) and DMARC
(RFC 7489), reported in an C{Authentication-Results:} header field (RFC 8601).

For each message accepted on port 25:

  - SPF (RFC 7208 §2.4, §4): C{check_host()} of the client IP for the MAIL FROM domain; for
    the null reverse-path C{<>} the HELO identity is checked instead (§2.3, §2.4:
    C{postmaster@<helo>}).  C{pyspf} evaluates the record; it is bounded to
    L{spf.MAX_LOOKUP} (10) DNS mechanisms and 2 void lookups (§4.6.4).
  - DKIM (RFC 6376 §6): every C{DKIM-Signature} (up to L{MAX_SIGNATURES}) is verified with
    C{dkimpy}; results pass / fail / neutral (signature unparsable) / permerror (no key) /
    temperror (DNS failure), RFC 8601 §2.7.1.
  - DMARC (RFC 7489 §6.6): the policy record of the From: domain (§6.6.3, falling back to the
    organizational domain, §3.2), aligned SPF or DKIM (relaxed or strict per C{aspf} /
    C{adkim}, §3.1) -> pass, otherwise fail; no record -> none; a temporary DNS failure
    anywhere that could have made it pass -> temperror (so a DNS outage never rejects mail).
  - ARC (RFC 8617 §5.2): a message that carries an ARC chain has it validated (dkimpy);
    C{arc=pass} or C{arc=fail} is added to the field, so that a forwarded copy's seal can
    say C{cv=} (L{twistedmail.srs.arc_seal}); the chain decides nothing here.

The organizational domain (RFC 7489 §3.2) comes from the Public Suffix List bundled with the
C{publicsuffixlist} package (no network fetch at run time).

The checks stay synchronous (pyspf and dkimpy call a DNS function and want an answer) but
no thread ever waits on the network: L{Authenticator} runs each check with a DNS function
that answers only from what is already known and notes what is not; the missing names are
then looked up asynchronously through twisted.names (L{DNSCache}: shared in-flight queries,
outcomes cached by TTL, temporary failures briefly) and the check is run again, until it
asks for nothing new.  SPF, the DKIM keys and the DMARC policy are looked up at once, and
one budget bounds all the DNS work of a message (L{CHECK_TIMEOUT}); a lookup unanswered by
then is a temporary error (C{temperror}), never a hang, and never holds other sessions.
A message without DKIM-Signature or ARC-Seal from the same client IP, HELO, sender and
author domain as a recent one gets that one's results while every DNS answer they were read
from is still the one cached (SPF and DMARC read nothing else: the same answers give the
same results).

L{authentication_results} formats the header (RFC 8601 §2.2); L{remove_authentication_results}
drops incoming ones that claim our authserv-id (RFC 8601 §5).
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import attrs
import dkim as dkimpy
import spf
from dkim.util import InvalidTagValueList, parse_tag_value
from publicsuffixlist import PublicSuffixList
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, IResolver
from twisted.logger import Logger
from twisted.names import dns
from twisted.names import error as dns_error
from twisted.python.failure import Failure

from twistedmail.address import Mailbox
from twistedmail.dkim import author_domain
from twistedmail.metrics import Metrics

log = Logger(namespace="twistedmail.mailauth")

CHECK_TIMEOUT = 20.0  # seconds for all DNS work of one message (RFC 7208 §4.6.4: >= 20 s)
QUERY_TIMEOUT = (2, 4)  # seconds per try of one query, twisted.names semantics
QUERY_LIMIT = CHECK_TIMEOUT + 1  # seconds before a query that never ends is abandoned
FAILURE_TTL = 30.0  # seconds a temporary DNS failure is remembered (RFC 2308 §7: <= 5 min)
NEGATIVE_TTL = 60  # NXDOMAIN / NODATA without an SOA in the answer (RFC 2308 §5)
MAX_NEGATIVE_TTL = 300  # at most, whatever the SOA says
MAX_TTL = 3600  # answers are remembered for their TTL, at most this
MAX_ENTRIES = 10000  # cached names (oldest forgotten first)
MAX_RECENT = 4096  # remembered results of unsigned messages (L{Authenticator}), oldest first
MAX_RECENT_AGE = MAX_NEGATIVE_TTL  # seconds such results are reused at most, whatever they read
MAX_SIGNATURES = 5  # DKIM-Signature fields verified per message (RFC 6376 §6.1: MAY limit)

_DOMAIN = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]"
    r"[A-Za-z0-9-]{0,61}[A-Za-z0-9]"
)
_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,255}")
_DMARC_VERSION = re.compile(rb"v\s*=\s*DMARC1\s*(;|\Z)")


class TemporaryDNSFailure(Exception):
    """A DNS query failed temporarily (SERVFAIL, timeout, refused, past the deadline)."""


class DNSQuery(Protocol):
    """A synchronous DNS query (see L{_MessageDNS.query_function}: it never waits).

    C{query(name, rtype)} -> the answer records as pyspf wants them: C{[((owner, type),
    value)]} with C{type} a name (C{"TXT"}, C{"A"}, ...) and C{value} an address text
    (A/AAAA), C{(preference, exchange)} (MX), a name (PTR, CNAME) or a list of byte strings
    (TXT).  NXDOMAIN and NODATA give C{[]}.

    @raise TemporaryDNSFailure: the query failed temporarily.
    """

    def __call__(self, name: str, rtype: str) -> list[tuple[tuple[str, str], Any]]: ...


# -- results ----------------------------------------------------------------------------


@attrs.frozen
class SPFResult:
    """RFC 7208 §2.6 result (C{pass fail softfail neutral none temperror permerror}) of the
    C{identity} (C{"mailfrom"} or C{"helo"}) for C{domain} (C{""} when nothing was checked)."""

    result: str
    identity: str
    domain: str


@attrs.frozen
class DKIMResult:
    """One signature's RFC 8601 §2.7.1 result, with its C{d=} and C{s=} (C{""} if unusable)."""

    result: str
    domain: str
    selector: str


@attrs.frozen
class DMARCResult:
    """RFC 7489 §11.2 result (C{pass fail none temperror}) for the From: domain.

    @ivar from_domain: the RFC5322.From domain, C{""} when the message has no single one.
    @ivar policy: the policy that applies to C{from_domain} (C{p=}, or C{sp=} when the record
        was found at the organizational domain, RFC 7489 §6.3): C{none quarantine reject},
        C{""} without a record.
    @ivar p: the record's C{p=}; C{sp}: its C{sp=} (C{p=} when absent), C{""} without a record.
    """

    result: str
    from_domain: str
    policy: str = ""
    p: str = ""
    sp: str = ""

    @property
    def rejects(self) -> bool:
        """A DMARC fail under C{p=reject} (as applied): RFC 7489 §6.7 says reject it."""
        return self.result == "fail" and self.policy == "reject"


@attrs.frozen
class AuthenticationResults:
    """What one message's checks found."""

    spf: SPFResult
    dkim: tuple[DKIMResult, ...]
    dmarc: DMARCResult
    arc: str | None = None
    """RFC 8617 §5.2 chain validation of a message that carries an ARC chain: C{"pass"}
    or C{"fail"}; C{None}: no chain, or unknown (a DNS failure)."""


# -- the organizational domain (RFC 7489 §3.2) -------------------------------------------

_psl: PublicSuffixList | None = None
_psl_lock = threading.Lock()


def organizational_domain(domain: str) -> str:
    """The organizational domain of C{domain} (RFC 7489 §3.2): one label below its public
    suffix by the bundled Public Suffix List; C{domain} itself when it is a public suffix.
    An unlisted TLD (C{.test}) counts as a public suffix: C{a.b.example.test} ->
    C{example.test}."""
    global _psl
    with _psl_lock:
        if _psl is None:
            _psl = PublicSuffixList()
        psl = _psl
    domain = domain.lower().rstrip(".")
    return psl.privatesuffix(domain) or domain


def _aligned(authenticated: str, author: str, mode: str) -> bool:
    """RFC 7489 §3.1.1 / §3.1.2: strict = same domain, relaxed = same organizational domain."""
    if not authenticated or not author:
        return False
    if authenticated == author:
        return True
    return mode != "s" and organizational_domain(authenticated) == organizational_domain(author)


# -- SPF (RFC 7208) ------------------------------------------------------------------------

_local = threading.local()
_pyspf_lookup = spf.DNSLookup


def _thread_lookup(name: str, qtype: str, strict: bool = True, timeout: float = 20) -> Any:
    """pyspf's module-level C{DNSLookup}, routed to the calling thread's L{DNSQuery}.

    pyspf has no per-query DNS hook, so its global is replaced once (at import) by this
    dispatcher; a thread inside L{check_spf} uses its own query function, any other caller
    gets pyspf's own lookup as before.
    """
    query: DNSQuery | None = getattr(_local, "query", None)
    if query is None:
        return _pyspf_lookup(name, qtype, strict, timeout)
    try:
        return query(name, qtype)
    except TemporaryDNSFailure as e:
        raise spf.TempError(f"DNS {e}") from None


spf.DNSLookup = _thread_lookup

_SPF_RESULTS = {"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"}


def check_spf(query: DNSQuery, ip: str, reverse_path: Mailbox | None, helo: str) -> SPFResult:
    """SPF C{check_host()} (RFC 7208 §4) of C{ip} for the MAIL FROM identity, or for the HELO
    identity when the reverse-path is null (§2.3, §2.4).  Blocking: call in a thread.

    @param helo: the HELO/EHLO argument; a HELO that is no domain name gives C{none}.
    """
    if reverse_path is not None:
        identity, domain, sender = "mailfrom", reverse_path.domain, str(reverse_path)
        if not _DOMAIN.fullmatch(domain):
            return SPFResult("none", "mailfrom", "")  # §4.3: an address literal, not a domain
    else:
        domain = helo.lower().rstrip(".")
        if not _DOMAIN.fullmatch(domain):
            return SPFResult("none", "helo", "")  # §2.3: an address literal is not checked
        identity, sender = "helo", ""
    _local.query = query
    try:
        q = spf.query(i=ip, s=sender, h=helo or domain, querytime=CHECK_TIMEOUT)
        result, _code, _explanation = q.check()
    except spf.TempError:
        result = "temperror"
    except Exception:
        # pyspf raises PermError from the constructor for a bad IP, and may raise others on
        # records it cannot parse: the record is unusable (RFC 7208 §2.6.7).
        result = "permerror"
    finally:
        _local.query = None
    return SPFResult(result if result in _SPF_RESULTS else "permerror", identity, domain)


# -- DKIM (RFC 6376) -----------------------------------------------------------------------


def txt_records(query: DNSQuery, name: str) -> list[bytes]:
    """Every TXT record at C{name}, its strings concatenated (RFC 6376 §3.6.2.2,
    RFC 7489 §6.1).  @raise TemporaryDNSFailure: see L{DNSQuery}."""
    return [b"".join(value) for (_, rtype), value in query(name, "TXT") if rtype == "TXT"]


def _tag(tags: dict[bytes, bytes], key: bytes) -> str:
    text = tags.get(key, b"").decode("ascii", "replace").strip().lower().rstrip(".")
    return text if _TOKEN.fullmatch(text) else ""


def verify_dkim(query: DNSQuery, message: bytes) -> tuple[DKIMResult, ...]:
    """Verify each C{DKIM-Signature} of C{message} (RFC 6376 §6.1), top first, at most
    L{MAX_SIGNATURES}.  Blocking: call in a thread.

    @return: one L{DKIMResult} per signature; empty when there is none (C{dkim=none}).
    """
    try:
        verifier = dkimpy.DKIM(message)  # one parse; each verify() call resets its state
    except dkimpy.DKIMException:
        return ()
    signatures = [v for name, v in verifier.headers if name.lower() == b"dkim-signature"]
    results = []
    for index, value in enumerate(signatures[:MAX_SIGNATURES]):
        try:
            tags = parse_tag_value(value)
        except InvalidTagValueList:
            tags = {}
        domain, selector = _tag(tags, b"d"), _tag(tags, b"s")
        state = {"temporary": False, "no key": False}

        def dnsfunc(
            name: bytes, timeout: float = 5, state: dict[str, bool] = state
        ) -> bytes | None:
            try:
                records = txt_records(query, name.decode("ascii", "replace").rstrip("."))
            except TemporaryDNSFailure as e:
                state["temporary"] = True
                raise dkimpy.DnsTimeoutError(str(e)) from None
            if not records:
                state["no key"] = True  # RFC 6376 §6.1.2: no key record -> PERMFAIL
                return None
            return records[0]

        try:
            prepared = verifier.verify_headerprep(index)
        except dkimpy.DKIMException:
            prepared = None
        if not prepared:
            # RFC 8601 §2.7.1: neutral, a signature with syntax errors (RFC 6376 §6.1.1).
            results.append(DKIMResult("neutral", domain, selector))
            continue
        sig, include_headers, fields = prepared
        try:
            ok = verifier.verify_sig(sig, include_headers, fields[index], dnsfunc)
        except dkimpy.KeyFormatError:
            ok, state["no key"] = False, True  # RFC 6376 §6.1.2: unusable key -> PERMFAIL
        except dkimpy.MessageFormatError:
            results.append(DKIMResult("neutral", domain, selector))
            continue
        except dkimpy.DKIMException:
            ok = False  # body hash mismatch and other validation failures (§6.1.3)
        except Exception:
            log.failure("dkim: verification of signature {index} failed", index=index)
            results.append(DKIMResult("neutral", domain, selector))
            continue
        if ok:
            result = "pass"
        elif state["temporary"]:
            result = "temperror"
        elif state["no key"]:
            result = "permerror"
        else:
            result = "fail"
        results.append(DKIMResult(result, domain, selector))
    return tuple(results)


# -- DMARC (RFC 7489) ----------------------------------------------------------------------


def parse_dmarc_record(record: bytes) -> dict[str, str] | None:
    """The tags of a DMARC record (RFC 7489 §6.3), lower-case names and values, C{p} and
    C{sp} validated; C{None} when it is no usable record (§6.6.3 step 6: a missing or bad
    C{p=} counts as C{p=none} only when C{rua=} is given).
    """
    if not _DMARC_VERSION.match(record):
        return None
    tags: dict[str, str] = {}
    for part in record.decode("ascii", "replace").split(";")[1:]:
        name, eq, value = part.partition("=")
        if eq:
            tags.setdefault(name.strip().lower(), value.strip().lower())
    policies = ("none", "quarantine", "reject")
    if tags.get("p") not in policies:
        if not tags.get("rua"):
            return None
        tags["p"] = "none"
    if tags.get("sp", tags["p"]) not in policies:
        if not tags.get("rua"):
            return None
        tags.pop("sp")
    tags.setdefault("sp", tags["p"])
    for mode in ("adkim", "aspf"):
        if tags.get(mode) not in ("r", "s"):
            tags[mode] = "r"  # §6.3: default relaxed
    return tags


def dmarc_policy(query: DNSQuery, from_domain: str) -> tuple[dict[str, str], bool] | None:
    """Policy discovery (RFC 7489 §6.6.3): the record at C{_dmarc.<From domain>}, else at
    C{_dmarc.<organizational domain>}.

    @return: (tags, found at the organizational domain), or C{None} when there is no single
        usable record.
    @raise TemporaryDNSFailure: a lookup failed temporarily.
    """
    org = organizational_domain(from_domain)
    for name in dict.fromkeys((from_domain, org)):
        records = [r for r in txt_records(query, f"_dmarc.{name}") if _DMARC_VERSION.match(r)]
        if len(records) > 1:
            return None  # §6.6.3 step 5: several records -> no DMARC processing
        if records:
            tags = parse_dmarc_record(records[0])
            return None if tags is None else (tags, name != from_domain)
    return None


def evaluate_dmarc(
    query: DNSQuery, from_domain: str | None, spf_result: SPFResult, dkim: Sequence[DKIMResult]
) -> DMARCResult:
    """DMARC for the From: domain (RFC 7489 §6.6.2): pass when an SPF or DKIM pass is for an
    aligned domain (§3.1).  Blocking: call in a thread."""
    if not from_domain:
        return DMARCResult("none", "")  # §6.6.1: no single author domain to evaluate
    try:
        found = dmarc_policy(query, from_domain)
    except TemporaryDNSFailure:
        return DMARCResult("temperror", from_domain)  # §6.6.3: retry later (we deliver)
    if found is None:
        return DMARCResult("none", from_domain)
    tags, at_org = found
    policy = tags["sp"] if at_org else tags["p"]  # §6.3: sp= for subdomains
    record = {"policy": policy, "p": tags["p"], "sp": tags["sp"]}
    spf_ok = spf_result.result == "pass" and _aligned(spf_result.domain, from_domain, tags["aspf"])
    dkim_ok = any(
        d.result == "pass" and _aligned(d.domain, from_domain, tags["adkim"]) for d in dkim
    )
    if spf_ok or dkim_ok:
        return DMARCResult("pass", from_domain, **record)
    if spf_result.result == "temperror" or any(d.result == "temperror" for d in dkim):
        # A DNS failure could hide a pass: never act on a fail we are unsure of.
        return DMARCResult("temperror", from_domain, **record)
    return DMARCResult("fail", from_domain, **record)


def verify_arc(query: DNSQuery, message: bytes) -> str | None:
    """Validate the ARC chain of C{message} (RFC 8617 §5.2, dkimpy): C{"pass"}, C{"fail"},
    C{None} when a key lookup failed temporarily (the chain is then neither trusted nor
    sealed on).  Blocking: call in a thread."""
    state = {"temporary": False}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            records = txt_records(query, name.decode("ascii", "replace").rstrip("."))
        except TemporaryDNSFailure as e:
            state["temporary"] = True
            raise dkimpy.DnsTimeoutError(str(e)) from None
        return records[0] if records else None

    try:
        cv, _, _ = dkimpy.arc_verify(message, dnsfunc=dnsfunc)
    except Exception:
        log.failure("arc: chain validation failed")
        return None
    if state["temporary"]:
        return None
    return {b"pass": "pass", b"fail": "fail"}.get(cv)


def check_message(
    query: DNSQuery, ip: str, helo: str, reverse_path: Mailbox | None, message: bytes
) -> AuthenticationResults:
    """SPF, DKIM and DMARC for one message (blocking, for a worker thread).

    @param ip: the SMTP client's address (text).
    @param message: the message as received (DKIM verifies it before any header is removed).
    """
    spf_result = check_spf(query, ip, reverse_path, helo)
    dkim = verify_dkim(query, message)
    dmarc = evaluate_dmarc(query, author_domain(message), spf_result, dkim)
    arc = verify_arc(query, message) if _has_field(message, b"arc-seal:") else None
    return AuthenticationResults(spf_result, dkim, dmarc, arc)


# -- the header field (RFC 8601) ---------------------------------------------------------


def _pvalue(text: str) -> str:
    """A property value (RFC 8601 §2.2): a token as is, anything else as a quoted-string of
    printable ASCII (the field must stay one safe header, whatever the network sent)."""
    if _TOKEN.fullmatch(text):
        return text
    return '"' + "".join(c for c in text if " " <= c <= "~" and c not in '"\\') + '"'


def authentication_results(authserv_id: str, results: AuthenticationResults) -> bytes:
    """The C{Authentication-Results:} field (RFC 8601 §2.2), folded one result a line, CRLF:

        Authentication-Results: mail.example.org;
        \tspf=pass smtp.mailfrom=example.net;
        \tdkim=pass header.d=example.net header.s=sel;
        \tdmarc=pass (p=reject sp=reject) header.from=example.net

    C{smtp.helo} replaces C{smtp.mailfrom} for the null reverse-path (§2.7.2); C{dkim=none}
    when there is no signature; the DMARC comment gives the record's C{p=} and C{sp=}.
    """
    s = results.spf
    spf_part = f"spf={s.result}"
    if s.domain:
        spf_part += f" smtp.{s.identity}={_pvalue(s.domain)}"
    parts = [spf_part]
    for d in results.dkim:
        part = f"dkim={d.result}"
        if d.domain:
            part += f" header.d={d.domain}"
        if d.selector:
            part += f" header.s={d.selector}"
        parts.append(part)
    if not results.dkim:
        parts.append("dkim=none")
    m = results.dmarc
    dmarc_part = f"dmarc={m.result}"
    if m.p:
        dmarc_part += f" (p={m.p} sp={m.sp})"
    if m.from_domain:
        dmarc_part += f" header.from={_pvalue(m.from_domain)}"
    parts.append(dmarc_part)
    if results.arc:
        parts.append(f"arc={results.arc}")  # RFC 8617 §4.4, for the seal's cv= (§5.1.1)
    text = f"Authentication-Results: {authserv_id};\r\n\t" + ";\r\n\t".join(parts) + "\r\n"
    return text.encode("ascii")


def _authserv_id(value: bytes) -> str:
    """The authserv-id of an Authentication-Results value (RFC 8601 §2.2): comments dropped,
    the first word before C{;}, quotes removed."""
    text = value.decode("latin-1")
    out, depth = [], 0
    for c in text:
        if c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif not depth:
            out.append(c)
    words = "".join(out).split(";", 1)[0].split()
    return words[0].strip('"').lower() if words else ""


def remove_authentication_results(message: bytes, authserv_id: str) -> bytes:
    """C{message} without the C{Authentication-Results:} fields whose authserv-id is ours,
    compared without case (RFC 8601 §5: a border MTA MUST remove forged ones); others stay.

    @param message: CRLF lines; only the header section (up to the first empty line) is
        looked at.
    """
    ours = authserv_id.lower()
    end = message.find(b"\r\n\r\n")
    header, body = (message[: end + 2], message[end + 2 :]) if end >= 0 else (message, b"")
    fields: list[list[bytes]] = []
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept = []
    for field in fields:
        name, colon, value = b"".join(field).partition(b":")
        if (
            colon
            and name.strip().lower() == b"authentication-results"
            and _authserv_id(value) == ours
        ):
            continue
        kept.append(b"".join(field))
    return b"".join(kept) + body


# -- glue: the checks replayed over asynchronous DNS -----------------------------------------

_RTYPES = {
    "A": dns.A,
    "AAAA": dns.AAAA,
    "MX": dns.MX,
    "PTR": dns.PTR,
    "TXT": dns.TXT,
    "SPF": dns.SPF,
    "CNAME": dns.CNAME,
}

Answers = list[tuple[tuple[str, str], Any]]
_Key = tuple[str, str]  # (name lower case without the trailing dot, type name)


def _answers(records: list[dns.RRHeader]) -> Answers:
    """twisted.names answers in pyspf's shape (see L{DNSQuery})."""
    out: Answers = []
    for rr in records:
        owner = rr.name.name.decode("ascii", "replace").rstrip(".").lower()
        p: Any = rr.payload
        if rr.type == dns.A:
            out.append(((owner, "A"), p.dottedQuad()))
        elif rr.type == dns.AAAA:
            out.append(((owner, "AAAA"), socket.inet_ntop(socket.AF_INET6, p.address)))
        elif rr.type == dns.MX:
            out.append(((owner, "MX"), (p.preference, p.name.name.decode("ascii", "replace"))))
        elif rr.type in (dns.PTR, dns.CNAME):
            name = "PTR" if rr.type == dns.PTR else "CNAME"
            out.append(((owner, name), p.name.name.decode("ascii", "replace").rstrip(".")))
        elif rr.type in (dns.TXT, dns.SPF):
            out.append(((owner, "TXT" if rr.type == dns.TXT else "SPF"), list(p.data)))
    return out


def _negative_ttl(authority: Sequence[dns.RRHeader]) -> int:
    """RFC 2308 §5: a negative answer is cached for min(SOA TTL, SOA MINIMUM)."""
    for rr in authority:
        if rr.type == dns.SOA and isinstance(rr.payload, dns.Record_SOA):
            return min(rr.ttl, rr.payload.minimum)
    return NEGATIVE_TTL


@attrs.frozen
class _Entry:
    """One cached outcome: the answers, or the temporary failure, until C{expires}."""

    expires: float
    answers: Answers | None
    failure: TemporaryDNSFailure | None = None


class DNSCache:
    """Asynchronous DNS queries through a twisted.names resolver, outcomes cached by TTL.

    Answers live for their smallest record TTL (at most L{MAX_TTL}); NXDOMAIN and NODATA
    for the negative TTL of the zone's SOA (RFC 2308 §5, at most L{MAX_NEGATIVE_TTL});
    a temporary failure (timeout, SERVFAIL, refused) for L{FAILURE_TTL} seconds (RFC 2308
    §7: briefly, never over five minutes), so a dead nameserver costs one timeout per
    name, not one per message.  Concurrent askers of one name share one query.  Runs on
    the reactor thread only; L{peek} may be called from any thread (it does not mutate).

    @param resolver: an C{IResolver} (C{[relay] nameservers}, or the system's).
    @param clock: time for the TTLs and the timeouts (a C{Clock} in tests).
    """

    def __init__(self, resolver: IResolver, clock: IReactorTime) -> None:
        self.resolver = resolver
        self.clock = clock
        self.stopped = False
        self._entries: dict[_Key, _Entry] = {}
        self._inflight: dict[_Key, defer.Deferred[Any]] = {}
        self._waiters: dict[_Key, list[defer.Deferred[Answers]]] = {}

    def peek(self, key: _Key) -> Answers | TemporaryDNSFailure | None:
        """The cached, unexpired outcome for C{key}; C{None} when there is none."""
        entry = self._entries.get(key)
        if entry is None or entry.expires <= self.clock.seconds():
            return None
        return entry.failure if entry.failure is not None else entry.answers

    def lookup(self, key: _Key, timeout: float) -> defer.Deferred[Answers]:
        """The answers for C{key} (C{[]} for NXDOMAIN / NODATA), waiting at most C{timeout}
        seconds; the query itself goes on for later askers when this one gives up.

        @return: a Deferred failing with L{TemporaryDNSFailure} on a temporary failure,
            when C{timeout} passes, or when the service is stopping.
        """
        name, rtype = key
        if self.stopped:
            return defer.fail(TemporaryDNSFailure(f"{rtype} {name}: server stopping"))
        if self.peek(key) is None and key not in self._inflight and timeout > 0:
            self._start(key)  # may answer at once (and fill the cache)
        hit = self.peek(key)
        if isinstance(hit, TemporaryDNSFailure):
            return defer.fail(hit)
        if hit is not None:
            return defer.succeed(hit)
        if timeout <= 0 or key not in self._inflight:
            return defer.fail(TemporaryDNSFailure(f"{rtype} {name}: time limit reached"))
        waiters = self._waiters.setdefault(key, [])

        def give_up(d: defer.Deferred[Answers]) -> None:
            if d in waiters:
                waiters.remove(d)

        waiter: defer.Deferred[Answers] = defer.Deferred(give_up)
        waiters.append(waiter)
        waiter.addTimeout(timeout, self.clock)

        def timed_out(failure: Failure) -> Failure:
            if failure.check(defer.TimeoutError):
                return Failure(TemporaryDNSFailure(f"{rtype} {name}: time limit reached"))
            return failure

        waiter.addErrback(timed_out)
        return waiter

    def _start(self, key: _Key) -> None:
        name, rtype = key
        query = dns.Query(name.encode("ascii"), _RTYPES[rtype], dns.IN)
        d = self.resolver.query(query, timeout=QUERY_TIMEOUT)
        # A resolver that never answers must not hold the entry forever (twisted.names
        # gives up by itself after QUERY_TIMEOUT per nameserver of resolv.conf).
        d.addTimeout(QUERY_LIMIT, self.clock)
        self._inflight[key] = d
        d.addCallbacks(lambda result: self._answered(key, result), lambda f: self._failed(key, f))

    def _store(self, key: _Key, entry: _Entry) -> None:
        if entry.expires > self.clock.seconds():
            self._entries.pop(key, None)
            self._entries[key] = entry
            while len(self._entries) > MAX_ENTRIES:
                del self._entries[next(iter(self._entries))]  # the oldest first

    def _settle(self, key: _Key) -> list[defer.Deferred[Answers]]:
        self._inflight.pop(key, None)
        return self._waiters.pop(key, [])

    def _answered(self, key: _Key, result: tuple[list[dns.RRHeader], Any, Any]) -> None:
        records, authority, _additional = result
        answers = _answers(records)
        now = self.clock.seconds()
        if records:
            ttl = min(MAX_TTL, min(rr.ttl for rr in records))
        else:
            ttl = min(MAX_NEGATIVE_TTL, _negative_ttl(authority))  # NODATA
        self._store(key, _Entry(now + ttl, answers))
        for waiter in self._settle(key):
            waiter.callback(answers)

    def _failed(self, key: _Key, failure: Failure) -> None:
        name, rtype = key
        now = self.clock.seconds()
        if failure.check(dns_error.DNSNameError, dns_error.AuthoritativeDomainError):
            # NXDOMAIN: no records (RFC 2308 §5 negative caching).
            value = failure.value
            message = value.args[0] if value is not None and value.args else None
            authority = getattr(message, "authority", [])
            ttl = min(MAX_NEGATIVE_TTL, _negative_ttl(authority))
            self._store(key, _Entry(now + ttl, []))
            for waiter in self._settle(key):
                waiter.callback([])
            return
        kind = failure.type.__name__ if failure.type is not None else "error"
        error = TemporaryDNSFailure(f"{rtype} {name}: {kind}")
        if not self.stopped:
            self._store(key, _Entry(now + FAILURE_TTL, None, error))
        for waiter in self._settle(key):
            waiter.errback(error)

    def entries(self, keys: Iterable[_Key]) -> tuple[tuple[_Key, _Entry], ...]:
        """The cache entries now held for C{keys} (each one known: see L{unchanged})."""
        return tuple((key, self._entries[key]) for key in keys)

    def unchanged(self, entries: tuple[tuple[_Key, _Entry], ...], expires: float) -> bool:
        """Whether every one of C{entries} is still the one cached for its name and none
        has expired (C{expires}: the earliest of theirs): a check that asked these names
        would see exactly the same answers now."""
        if expires <= self.clock.seconds():
            return False
        held = self._entries
        return all(held.get(key) is entry for key, entry in entries)

    def stop(self) -> None:
        """Fail every pending and later query at once (at shutdown)."""
        self.stopped = True
        for d in list(self._inflight.values()):
            d.cancel()


_MAX_ROUNDS = 25  # replays of one check; each adds at least one answered name


class _MessageDNS:
    """The DNS of one message: every outcome it has seen, so each replay of a check sees
    the same answers, and one deadline for all its queries (L{Authenticator.timeout})."""

    def __init__(self, cache: DNSCache, deadline: float) -> None:
        self.cache = cache
        self.deadline = deadline
        self.seen: dict[_Key, Answers | TemporaryDNSFailure] = {}

    def query_function(self, missing: set[_Key]) -> DNSQuery:
        """A L{DNSQuery} that never waits: it answers from what is known, and records in
        C{missing} (and fails temporarily) what is not known yet."""

        def query(name: str, rtype: str) -> Answers:
            if rtype not in _RTYPES:
                return []
            text = name.lower().rstrip(".")
            if not text.isascii():
                return []
            key = (text, rtype)
            known = self.seen.get(key)
            if known is None:
                known = self.cache.peek(key)
                if known is not None:
                    self.seen[key] = known
            if known is None:
                missing.add(key)
                raise TemporaryDNSFailure(f"{rtype} {name}: not answered yet")
            if isinstance(known, TemporaryDNSFailure):
                raise known
            return known

        return query

    async def _fetch(self, key: _Key) -> None:
        remaining = self.deadline - self.cache.clock.seconds()
        try:
            self.seen[key] = await self.cache.lookup(key, remaining)
        except TemporaryDNSFailure as e:
            self.seen[key] = e

    async def replay(
        self,
        check: Callable[[DNSQuery], Any],
        run: Callable[..., Any] | None = None,
        first: set[_Key] | None = None,
    ) -> Any:
        """Run C{check(query)} until it asks for nothing unknown: each run that met an
        unknown name is thrown away, the names are looked up (concurrently, within the
        deadline), and the check runs again.  pyspf and dkimpy stay synchronous and no
        thread ever waits on the network.

        @param run: C{f, *args -> Deferred} to run each pass in a thread (CPU-heavy DKIM
            verification); C{None}: on the calling (reactor) thread.
        @param first: the names a pass of the same check already ran into (the one-pass
            path of L{Authenticator._check}): looked up first, so that pass is not run again.
        """
        if first:
            await self._fetch_all(first)
        for _ in range(_MAX_ROUNDS):
            missing: set[_Key] = set()
            query = self.query_function(missing)
            result = check(query) if run is None else await run(check, query)
            if not missing:
                return result
            await self._fetch_all(missing)
        return result

    async def _fetch_all(self, missing: set[_Key]) -> None:
        await defer.gatherResults(
            [defer.Deferred.fromCoroutine(self._fetch(key)) for key in missing],
            consumeErrors=True,
        )


async def spf_of(
    cache: DNSCache,
    ip: str,
    reverse_path: Mailbox | None,
    helo: str,
    timeout: float = CHECK_TIMEOUT,
) -> SPFResult:
    """L{check_spf} over asynchronous DNS (the replay of L{_MessageDNS}), within C{timeout}
    seconds: what a receiver would conclude for mail from C{ip} (C{twistedmail check})."""
    lookups = _MessageDNS(cache, cache.clock.seconds() + timeout)
    result: SPFResult = await lookups.replay(lambda query: check_spf(query, ip, reverse_path, helo))
    return result


def _has_dkim_signature(message: bytes) -> bool:
    """Whether the header section has a DKIM-Signature field (cheap: no parse)."""
    end = message.find(b"\r\n\r\n")
    header = (message if end < 0 else message[: end + 2]).lower()
    return header.startswith(b"dkim-signature:") or b"\ndkim-signature:" in header


def _has_field(message: bytes, name: bytes) -> bool:
    """Whether the header section has a field C{name} (lower case, with the colon)."""
    end = message.find(b"\r\n\r\n")
    header = (message if end < 0 else message[: end + 2]).lower()
    return header.startswith(name) or b"\n" + name in header


def _prefetch_policy(query: DNSQuery, from_domain: str | None) -> None:
    """Policy discovery alone (RFC 7489 §6.6.3), so its lookups run beside SPF's."""
    if from_domain:
        try:
            dmarc_policy(query, from_domain)
        except TemporaryDNSFailure:
            pass


_RecentKey = tuple[str, str, Mailbox | None, str | None]  # ip, HELO, sender, author domain


@attrs.frozen
class _Recent:
    """The results of a one-pass check and the cache entries they were read from."""

    results: AuthenticationResults
    entries: tuple[tuple[_Key, _Entry], ...]
    expires: float  # the earliest of the entries'


class Authenticator:
    """SPF, DKIM and DMARC of inbound messages over asynchronous twisted.names queries.

    Every message has one budget (C{timeout}) for all its DNS work; its SPF evaluation,
    DKIM key lookups and DMARC policy discovery run at once; a lookup still unanswered at
    the budget's end is a temporary error (RFC 7208 §4.6.4: temperror; RFC 7489 §6.6.3:
    temperror).  No thread waits on DNS, so a dead nameserver delays each message by at
    most one budget and never delays other sessions; outcomes are cached (L{DNSCache}).

    @param resolver: an C{IResolver} (C{[relay] nameservers}, or the system's).
    @param clock: the reactor: time for the budget, the TTLs and the query timeouts.
    @param run_in_thread: C{f, *args -> Deferred} on a worker thread, for the DKIM
        verification (hashing, RSA) of messages that carry a signature.
    @param timeout: seconds for all DNS work of one message (L{CHECK_TIMEOUT}).
    """

    def __init__(
        self,
        resolver: IResolver,
        clock: IReactorTime,
        run_in_thread: Callable[..., defer.Deferred[Any]],
        timeout: float = CHECK_TIMEOUT,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics  # read by the port-25 policy (C{metrics.of(authenticator)})
        self.cache = DNSCache(resolver, clock)
        self.clock = clock
        self.run_in_thread = run_in_thread
        self.timeout = timeout
        self._recent: dict[_RecentKey, _Recent] = {}
        # The Public Suffix List is read now (40-300 ms of CPU), not on the reactor thread at
        # the first message that needs an organizational domain (RFC 7489 §3.2).
        organizational_domain("example.org")

    def stop(self) -> None:
        """Fail every pending and later query at once (on the reactor thread, at shutdown)."""
        self.cache.stop()

    async def _check(
        self, ip: str, helo: str, reverse_path: Mailbox | None, message: bytes
    ) -> AuthenticationResults:
        lookups = _MessageDNS(self.cache, self.clock.seconds() + self.timeout)
        from_domain = author_domain(message)
        signed = _has_dkim_signature(message)
        sealed = _has_field(message, b"arc-seal:")  # RFC 8617 §5.2, for our seal when forwarded
        spf_missing: set[_Key] = set()
        policy_missing: set[_Key] = set()
        spf_d: defer.Deferred[SPFResult] | None = None
        if not signed and not sealed:
            # The same client, HELO, sender and author domain as a recent message whose
            # answers are all still the cached ones: its results (SPF and DMARC read nothing
            # else; issue 10: pyspf's setup and DMARC were 10-14% of the CPU per message).
            recent_key = (ip, helo, reverse_path, from_domain)
            recent = self._recent.get(recent_key)
            if recent is not None:
                if self.cache.unchanged(recent.entries, recent.expires):
                    return recent.results
                del self._recent[recent_key]
            # Every answer cached already (the common case): SPF and DMARC in one pass on
            # this thread, without the Deferreds of the concurrent path below.  On a cold
            # cache, what this pass learnt carries over: an SPF result it reached is kept,
            # and the names it ran into are looked up before the next pass (issue 10: the
            # concurrent path ran the same first SPF pass again).
            spf_result = check_spf(lookups.query_function(spf_missing), ip, reverse_path, helo)
            if not spf_missing:
                spf_d = defer.succeed(spf_result)
                query = lookups.query_function(policy_missing)
                dmarc = evaluate_dmarc(query, from_domain, spf_result, ())
                if not policy_missing:
                    results = AuthenticationResults(spf_result, (), dmarc, None)
                    self._remember(recent_key, results, lookups.seen)
                    return results
        if spf_d is None:
            spf_d = defer.Deferred.fromCoroutine(
                lookups.replay(lambda q: check_spf(q, ip, reverse_path, helo), None, spf_missing)
            )
        if signed:
            dkim_d = defer.Deferred.fromCoroutine(
                lookups.replay(lambda q: verify_dkim(q, message), self.run_in_thread)
            )
        else:
            dkim_d = defer.succeed(())  # RFC 8601 §2.7.1: dkim=none, nothing to verify
        policy_d = defer.Deferred.fromCoroutine(
            lookups.replay(lambda q: _prefetch_policy(q, from_domain), None, policy_missing)
        )
        if sealed:
            arc_d = defer.Deferred.fromCoroutine(
                lookups.replay(lambda q: verify_arc(q, message), self.run_in_thread)
            )
        else:
            arc_d = defer.succeed(None)
        spf_result, dkim, _, arc = await defer.gatherResults(
            [spf_d, dkim_d, policy_d, arc_d], consumeErrors=True
        )
        dmarc = await lookups.replay(lambda q: evaluate_dmarc(q, from_domain, spf_result, dkim))
        return AuthenticationResults(spf_result, dkim, dmarc, arc)

    def _remember(
        self, key: _RecentKey, results: AuthenticationResults, seen: Iterable[_Key]
    ) -> None:
        """Keep the results of a one-pass check (every name it asked was cached: C{seen})
        for the next message of the same key, while those cache entries stand, and
        L{MAX_RECENT_AGE} seconds at most (a check that asked no name has no entry to
        expire with: it was kept for ever)."""
        entries = self.cache.entries(seen)
        bound = self.clock.seconds() + MAX_RECENT_AGE
        expires = min([entry.expires for _, entry in entries] + [bound])
        self._recent[key] = _Recent(results, entries, expires)
        while len(self._recent) > MAX_RECENT:
            del self._recent[next(iter(self._recent))]  # the oldest first

    async def check(
        self, ip: str, helo: str, reverse_path: Mailbox | None, message: bytes
    ) -> AuthenticationResults | None:
        """SPF, DKIM, DMARC for one message, within the budget.

        @return: the results; C{None} (logged) if the checks failed unexpectedly, so the
            message is delivered anyway.
        """
        try:
            return await self._check(ip, helo, reverse_path, message)
        except Exception:
            log.failure("authentication checks failed")
            return None
