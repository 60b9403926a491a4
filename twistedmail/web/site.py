"""The HTTP listener's resource tree and Site, with its limits.

L{build_site} returns a plain L{Resource} tree; another feature mounts its own path on it
with one C{root.putChild(b"metrics", resource)}, or L{mount} for a deeper path.
L{web_factory} wraps it in a L{WebSite}: an idle timeout, at most L{MAX_HEADERS} header
lines of L{MAX_HEADER_OCTETS} in all (more: 400 and the connection closed), request
bodies up to L{MAX_BODY} octets (more: 413), a plain C{Server: twistedmail} header without
a version, no directory listing, no traceback (L{Site.displayTracebacks} stays off).
HEAD is GET without the body (twisted.web does it).

Which domain an answer is for: the address asked about (C{?emailaddress=} or the
autodiscover request), else the C{Host} header without its C{autoconfig.} /
C{autodiscover.} / C{mta-sts.} label.  A domain that is not local gets 404.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import http, pages, server
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from twistedmail.web import autoconfig, autodiscover, mobileconfig, mtasts
from twistedmail.web.mailsettings import MailSettings

log = Logger(namespace="twistedmail.web")

MAX_HEADERS = 64
MAX_HEADER_OCTETS = 8192  # the request line and every header line
MAX_BODY = 65536
IDLE_TIMEOUT = 30  # seconds without a complete request before the connection is closed
SERVER = b"twistedmail"
HOST_LABELS = ("autoconfig.", "autodiscover.", "mta-sts.")


NOT_FOUND = pages.notFound("Not Found", "No such document.")


def _not_found(request: Any) -> bytes:
    body: bytes = NOT_FOUND.render(request)
    return body


class _NotFound(Resource):
    """404 for every path below (no directory listing); the root of the tree is one."""

    def getChild(self, path: bytes, request: Any) -> IResource:
        return NOT_FOUND

    def render(self, request: Any) -> bytes:
        return _not_found(request)


class _Document(Resource):
    """A leaf answering GET (and HEAD) with what C{answer(request)} returns, or 404."""

    isLeaf = True

    def __init__(self, answer: Any) -> None:
        super().__init__()
        self.answer = answer

    def render_GET(self, request: Request) -> bytes:
        found = self.answer(request)
        if found is None:
            return _not_found(request)
        content_type, body = found
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"no-cache")
        return bytes(body)


def _host(request: Request) -> str:
    """The C{Host} header's name, lower case, without port and trailing dot."""
    return request.getRequestHostname().decode("ascii", "replace").lower().rstrip(".")


def _argument(request: Request, name: bytes) -> str | None:
    values = (request.args or {}).get(name)
    return values[0].decode("utf-8", "replace") if values else None


class _Answers:
    """The answers of every document, for one L{MailSettings}."""

    def __init__(self, settings: MailSettings, mta_sts_policy: bytes) -> None:
        self.settings = settings
        self.mta_sts_policy = mta_sts_policy

    def domain_of(self, request: Request) -> str | None:
        """The local domain a request is about (module docstring), or C{None}."""
        address = _argument(request, b"emailaddress")
        if address is not None:
            mailbox = self.settings.local_address(address)
            return mailbox.domain if mailbox is not None else None
        host = _host(request)
        for label in HOST_LABELS:
            if host.startswith(label):
                host = host.removeprefix(label)
                break
        return self.settings.local_domain(host)

    def autoconfig(self, request: Request) -> tuple[bytes, bytes] | None:
        domain = self.domain_of(request)
        if domain is None:
            return None
        return b"text/xml; charset=utf-8", autoconfig.client_config(domain, self.settings)

    def mobileconfig(self, request: Request) -> tuple[bytes, bytes] | None:
        mailbox = self.settings.local_address(_argument(request, b"emailaddress") or "")
        if mailbox is None:
            return None
        body = mobileconfig.profile(mailbox, self.settings)
        if body is None:
            return None
        name = quote(f"{mailbox.domain}.mobileconfig")
        request.setHeader(b"content-disposition", f"attachment; filename={name}".encode())
        return mobileconfig.CONTENT_TYPE, body

    def mta_sts(self, request: Request) -> tuple[bytes, bytes] | None:
        # RFC 8461 §3.3: fetched over HTTPS only, from mta-sts.DOMAIN
        host = _host(request)
        if not request.isSecure() or not host.startswith("mta-sts."):
            return None
        if self.settings.local_domain(host.removeprefix("mta-sts.")) is None:
            return None
        return b"text/plain", self.mta_sts_policy


class _Autodiscover(Resource):
    """C{POST} of an Outlook POX request: 400 for a body that is not one, 404 for an
    address of a domain that is not local."""

    isLeaf = True

    def __init__(self, settings: MailSettings) -> None:
        super().__init__()
        self.settings = settings

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        body = request.content.read(autodiscover.MAX_REQUEST + 1)
        if len(body) > autodiscover.MAX_REQUEST:
            request.setResponseCode(http.REQUEST_ENTITY_TOO_LARGE)
            return b""
        try:
            address = autodiscover.requested_address(body)
        except autodiscover.AutodiscoverError as e:
            log.info("autodiscover: bad request from {ip}: {error}", ip=_ip(request), error=e)
            request.setResponseCode(http.BAD_REQUEST)
            request.setHeader(b"content-type", b"text/plain")
            return b"Bad Request\n"
        mailbox = self.settings.local_address(address)
        if mailbox is None:
            return _not_found(request)
        request.setHeader(b"content-type", b"text/xml; charset=utf-8")
        return autodiscover.response(str(mailbox), self.settings)


def _ip(request: Request) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", peer))


def mount(root: Resource, path: tuple[bytes, ...], leaf: IResource) -> None:
    """Put C{leaf} at C{path} below C{root}, creating 404 directories on the way, e.g.
    C{mount(root, (b".well-known", b"acme-challenge"), challenges)}: a path below an
    existing directory such as C{.well-known} keeps that directory's other children."""
    node = root
    for name in path[:-1]:
        child = node.children.get(name)
        if child is None:
            child = _NotFound()
            node.putChild(name, child)
        node = child
    node.putChild(path[-1], leaf)


def build_site(settings: MailSettings, mta_sts_policy: bytes) -> Resource:
    """The root resource: every document of the package docstring, 404 elsewhere.

    @param mta_sts_policy: the policy text (L{mtasts.policy}) served to C{mta-sts.DOMAIN}.
    """
    answers = _Answers(settings, mta_sts_policy)
    root = _NotFound()
    mount(root, autoconfig.PATH, _Document(answers.autoconfig))
    mount(root, autoconfig.WELL_KNOWN_PATH, _Document(answers.autoconfig))
    mount(root, mtasts.PATH, _Document(answers.mta_sts))
    mount(root, mobileconfig.PATH, _Document(answers.mobileconfig))
    for path in autodiscover.PATHS:
        mount(root, path, _Autodiscover(settings))
    return root


class _Channel(http.HTTPChannel):
    maxHeaders = MAX_HEADERS
    totalHeadersSize = MAX_HEADER_OCTETS


class _LimitedRequest(server.Request):
    """A request whose body may not pass L{MAX_BODY}: 413 and the connection closed."""

    _received = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self._refuse()
        super().gotLength(length if not self._refused else 0)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > MAX_BODY:
            self._refuse()
            return
        super().handleContentChunk(data)

    def _refuse(self) -> None:
        self._refused = True
        transport = self.channel.transport
        assert transport is not None
        transport.write(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        transport.loseConnection()


class WebSite(server.Site):
    """A Site with the limits of the module docstring."""

    displayTracebacks = False

    def protocol(self) -> http.HTTPChannel:  # type: ignore[override]
        return _Channel()

    def getResourceFor(self, request: Request) -> Resource:
        request.setHeader(b"server", SERVER)  # Request.process set "TwistedWeb/VERSION"
        resource: Resource = super().getResourceFor(request)
        return resource


def web_factory(root: Resource, reactor: IReactorTime) -> WebSite:
    """The Site serving C{root} (from L{build_site}, plus what others mounted)."""
    site = WebSite(root, requestFactory=_LimitedRequest, timeout=IDLE_TIMEOUT, reactor=reactor)
    site.noisy = False
    return site
