"""What a client exchanges with a UPnP Internet Gateway Device to get a port mapping
(sans-IO), the third method after PCP and NAT-PMP, as Tailscale's ``net/portmapper`` does:

1. SSDP discovery: :func:`msearch` is an ``M-SEARCH`` datagram, sent *unicast* to the default
   gateway's UDP port 1900 (never to the multicast group); :func:`parse_ssdp_answer` reads the
   gateway's ``HTTP/1.1 200 OK`` answer and its ``LOCATION`` (an ``http://`` URL).
2. The device description (XML, by HTTP GET): :func:`find_wan_service` picks the
   ``WANIPConnection:2``, else ``:1``, else ``WANPPPConnection:1`` service and its control URL.
3. SOAP over HTTP POST to that URL: :func:`soap_request` builds ``AddPortMapping``,
   ``DeletePortMapping`` and ``GetExternalIPAddress`` calls; :func:`parse_soap_answer` reads
   the output arguments, or raises :class:`UpnpFault` with the UPnP error code.

Whatever the gateway says is hostile: every message has a size limit checked before anything
is parsed (:data:`MAX_SSDP_BYTES`, :data:`MAX_HTTP_BYTES`), headers must be ASCII, a URL only
ever yields a path (the client connects to the gateway's address, whatever host a URL names),
and XML with a document type declaration (``<!DOCTYPE``, where entities would be declared) is
refused before it reaches the parser: no entity is ever expanded. Anything malformed raises
:class:`BadUpnpMessage`, never anything else.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.sax.saxutils import escape

from overlay.media.portmap_wire import PortMapError

SSDP_PORT = 1900
MAX_SSDP_BYTES = 2048
#: an HTTP answer (status line, headers and body) from the gateway
MAX_HTTP_BYTES = 65536
MAX_HEADER_LINES = 64
#: the search targets we ask for (Tailscale sends both: some devices answer ``ssdp:all``
#: with their first descriptor only, tailscale/tailscale#3557)
SEARCH_TARGETS = ("urn:schemas-upnp-org:device:InternetGatewayDevice:1", "ssdp:all")
#: the services that map ports, best first
WAN_SERVICES = (
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
)
#: UPnP error codes after which Tailscale asks again for a permanent lease (lease 0):
#: 402 Invalid Args, 725 OnlyPermanentLeasesSupported (tailscale/tailscale#9343, #15223)
PERMANENT_LEASE_RETRY = frozenset({402, 725})
#: 718 ConflictInMappingEntry: another host holds that external port
CONFLICT = 718
_SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
_URL_RE = re.compile(r"^http://([0-9A-Za-z.\-\[\]:]{1,64}?)(?::(\d{1,5}))?(/[\x21-\x7e]{0,255})?$")
_PATH_RE = re.compile(r"^/[\x21-\x7e]{0,255}$")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")
_ENCODING_RE = re.compile(r"^\s*<\?xml[^>]*encoding\s*=\s*[\"']([^\"']*)")


class BadUpnpMessage(PortMapError):
    """An answer from the gateway that is not a well-formed SSDP, HTTP, XML or SOAP answer."""


class UpnpFault(PortMapError):
    """The gateway answered a SOAP call with a UPnP error."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(f"UPnP error {code} {description}")
        self.code = code
        self.description = description


@dataclass(frozen=True)
class SsdpAnswer:
    """Where the gateway's device description is: the port and path of its ``LOCATION``."""

    port: int
    path: str


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: bytes


@dataclass(frozen=True)
class WanService:
    service_type: str
    control_path: str


def msearch(target: str) -> bytes:
    """An SSDP ``M-SEARCH`` for ``target`` (sent unicast to the gateway's port 1900)."""
    return (f"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nST: {target}\r\n"
            'MAN: "ssdp:discover"\r\nMX: 2\r\n\r\n').encode()


def _headers(lines: list[bytes]) -> dict[str, str]:
    if len(lines) > MAX_HEADER_LINES:
        raise BadUpnpMessage("too many header lines")
    out: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not name or not name.isascii() or not value.isascii() \
                or not name.strip().replace(b"-", b"").replace(b"_", b"").isalnum():
            raise BadUpnpMessage("malformed header line")
        out[name.strip().decode().lower()] = value.strip().decode()
    return out


def url_path(url: str) -> tuple[int | None, str]:
    """``(port, path)`` of an ``http://`` URL (the host is not used: the client talks to its
    gateway only, as Tailscale repoints a LOCATION naming another host,
    tailscale/tailscale#5502), or of an absolute path (port None)."""
    if _PATH_RE.match(url):
        return None, url
    m = _URL_RE.match(url)
    if m is None:
        raise BadUpnpMessage("not an http:// URL or an absolute path")
    port = int(m.group(2)) if m.group(2) else 80
    if not 0 < port < 65536:
        raise BadUpnpMessage("port out of range")
    return port, m.group(3) or "/"


def parse_ssdp_answer(data: bytes) -> SsdpAnswer:
    """The gateway's answer to an M-SEARCH."""
    if len(data) > MAX_SSDP_BYTES:
        raise BadUpnpMessage("SSDP answer too long")
    head, sep, _ = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not sep or not re.match(rb"^HTTP/1\.[01] 200 [ -~]{0,64}$", lines[0]):
        raise BadUpnpMessage("not an SSDP 200 answer")
    location = _headers(lines[1:]).get("location")
    if location is None:
        raise BadUpnpMessage("SSDP answer without LOCATION")
    port, path = url_path(location)
    if port is None:
        raise BadUpnpMessage("LOCATION is not an http:// URL")
    return SsdpAnswer(port, path)


def parse_http_answer(data: bytes) -> HttpAnswer:
    """An HTTP/1.x answer read to the end of the connection (we send ``Connection: close``):
    ``Content-Length`` (if given) must match the body; chunked bodies are refused."""
    if len(data) > MAX_HTTP_BYTES:
        raise BadUpnpMessage("HTTP answer too long")
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    m = re.match(rb"^HTTP/1\.[01] (\d{3})(?: [ -~]{0,64})?$", lines[0])
    if not sep or m is None:
        raise BadUpnpMessage("not an HTTP answer")
    headers = _headers(lines[1:])
    if "transfer-encoding" in headers:
        raise BadUpnpMessage("chunked answers are not accepted")
    length = headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()) or int(length) > len(body):
            raise BadUpnpMessage("body shorter than Content-Length")
        body = body[:int(length)]
    return HttpAnswer(int(m.group(1)), body)


def _xml(body: bytes) -> ET.Element:
    if len(body) > MAX_HTTP_BYTES:
        raise BadUpnpMessage("XML too long")
    # UTF-8 only (no NUL, no BOM, no other declared encoding: in UTF-16 or UTF-7 a DOCTYPE
    # would not read "<!"), then no DOCTYPE (entities) and no CDATA
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadUpnpMessage("XML that is not UTF-8") from None
    declared = _ENCODING_RE.search(text[:200])
    if "\x00" in text or text.startswith("\ufeff") or (
            declared is not None and declared.group(1).lower() not in ("utf-8", "utf8")):
        raise BadUpnpMessage("XML that is not UTF-8")
    if "<!" in text.replace("<!--", ""):
        raise BadUpnpMessage("XML with a document type declaration or CDATA")
    try:
        return ET.fromstring(body)
    except (ET.ParseError, ValueError, LookupError) as exc:  # LookupError: an unknown encoding
        raise BadUpnpMessage(f"malformed XML: {exc}") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child_text(element: ET.Element, name: str) -> str | None:
    for child in element:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return None


def find_wan_service(body: bytes) -> WanService:
    """The best port-mapping service of a device description (whatever device nests it)."""
    found: dict[str, str] = {}
    for element in _xml(body).iter():
        if _local(element.tag) != "service":
            continue
        kind, control = _child_text(element, "serviceType"), _child_text(element, "controlURL")
        if kind in WAN_SERVICES and control and kind not in found:
            found[kind] = control
    for kind in WAN_SERVICES:
        if kind in found:
            return WanService(kind, url_path(found[kind])[1])
    raise BadUpnpMessage("no WANIPConnection or WANPPPConnection service")


def soap_request(host: str, port: int, service: WanService, action: str,
                 arguments: tuple[tuple[str, str], ...] = ()) -> bytes:
    """The HTTP POST of a SOAP ``action`` with ``arguments`` (name, value) to the service."""
    if not _NAME_RE.match(action) or not all(_NAME_RE.match(n) for n, _ in arguments):
        raise ValueError("action and argument names are plain words")
    args = "".join(f"<{n}>{escape(v)}</{n}>" for n, v in arguments)
    body = (f'<?xml version="1.0"?>\r\n<s:Envelope xmlns:s="{_SOAP_ENV}" '
            's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>'
            f'<u:{action} xmlns:u="{escape(service.service_type)}">{args}</u:{action}>'
            "</s:Body></s:Envelope>\r\n").encode()
    head = (f"POST {service.control_path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            'Content-Type: text/xml; charset="utf-8"\r\n'
            f'SOAPAction: "{service.service_type}#{action}"\r\n'
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def http_get(host: str, port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()


def parse_soap_answer(answer: HttpAnswer, action: str) -> dict[str, str]:
    """The output arguments of ``action``'s answer; :class:`UpnpFault` for a UPnP error."""
    root = _xml(answer.body)
    body = next((e for e in root if _local(e.tag) == "Body"), None)
    if _local(root.tag) != "Envelope" or body is None or len(body) != 1:
        raise BadUpnpMessage("not a SOAP envelope with one body element")
    element = body[0]
    if _local(element.tag) == "Fault":
        error = next((e for e in element.iter() if _local(e.tag) == "UPnPError"), None)
        code = _child_text(error, "errorCode") if error is not None else None
        if code is None or not (code.isascii() and code.isdigit()) or len(code) > 4:
            raise BadUpnpMessage("SOAP fault without a UPnP error code")
        description = (_child_text(error, "errorDescription") or "") if error is not None else ""
        raise UpnpFault(int(code), description[:100])
    if answer.status != 200 or _local(element.tag) != f"{action}Response":
        raise BadUpnpMessage(f"not an answer to {action}")
    return {_local(child.tag): (child.text or "").strip()[:256] for child in element}
