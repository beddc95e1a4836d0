"""A small UPnP Internet Gateway Device for the lab's ``mapping`` routers (part of
``portmapd.py``, standard library only): it answers SSDP ``M-SEARCH`` on the router's LAN
address, UDP port 1900 (unicast, as clients that follow Tailscale's portmapper send it), with
a ``LOCATION`` on its tiny HTTP server (LAN address, TCP port :data:`HTTP_PORT`), which serves
the device description and the ``WANIPConnection:1`` SOAP actions ``AddPortMapping``,
``DeletePortMapping`` and ``GetExternalIPAddress``. Mappings are granted by the same
:class:`portmapd.Server` as PCP/NAT-PMP ones (same nft rules, lifetimes, events with
``"via": "upnp"``). Only hosts of the LAN; a host maps only to itself (``NewInternalClient``
must be its own address, as miniupnpd's secure mode wants); an external port held by another
mapping is ``718 ConflictInMappingEntry``. A lease of 0 (permanent) lasts ``--max-lifetime``."""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any

HTTP_PORT = 5000
SSDP_PORT = 1900
MAX_REQUEST = 16384
SERVICE = "urn:schemas-upnp-org:service:WANIPConnection:1"
DEVICE = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
CONTROL_PATH = "/ctl/IPConn"
DESC_PATH = "/rootDesc.xml"
UUID = "uuid:6e61746c-6162-4967-6400-000000000001"
SEARCH_TARGETS = ("ssdp:all", "upnp:rootdevice", DEVICE, SERVICE)

DESCRIPTION = f"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0">
<specVersion><major>1</major><minor>0</minor></specVersion>
<device><deviceType>{DEVICE}</deviceType><friendlyName>natlab router</friendlyName>
<UDN>{UUID}</UDN>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
<UDN>{UUID}-wan</UDN>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
<UDN>{UUID}-conn</UDN>
<serviceList><service><serviceType>{SERVICE}</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>
<controlURL>{CONTROL_PATH}</controlURL><eventSubURL>/evt/IPConn</eventSubURL>
<SCPDURL>/WANIPCn.xml</SCPDURL></service></serviceList>
</device></deviceList></device></deviceList></device></root>
"""


def _soap(action: str, body: str) -> str:
    return ('<?xml version="1.0"?>\r\n<s:Envelope '
            'xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
            's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>'
            f'<u:{action}Response xmlns:u="{SERVICE}">{body}</u:{action}Response>'
            "</s:Body></s:Envelope>\r\n")


def _fault(code: int, text: str) -> str:
    return ('<?xml version="1.0"?>\r\n<s:Envelope '
            'xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
            's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body><s:Fault>'
            "<faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>"
            '<UPnPError xmlns="urn:schemas-upnp-org:control-1-0">'
            f"<errorCode>{code}</errorCode><errorDescription>{text}</errorDescription>"
            "</UPnPError></detail></s:Fault></s:Body></s:Envelope>\r\n")


class Igd:
    """The SSDP and HTTP sockets, and the SOAP actions on ``server`` (a portmapd Server)."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.ssdp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.ssdp.bind((server.lan_ip, SSDP_PORT))
        self.http = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.http.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.http.bind((server.lan_ip, HTTP_PORT))
        self.http.listen(8)

    def on_ssdp(self) -> None:
        try:
            data, (src, port) = self.ssdp.recvfrom(2048)
        except OSError:
            return
        if not self._on_lan(src) or not data.startswith(b"M-SEARCH * HTTP/1.1\r\n"):
            return
        m = re.search(rb"\r\nST: *([!-~]{1,100})\r\n", data, re.IGNORECASE)
        if m is None or m.group(1).decode() not in SEARCH_TARGETS:
            return
        target = m.group(1).decode()
        answer = (f"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: {target}\r\n"
                  f"USN: {UUID}::{target}\r\nEXT:\r\nSERVER: natlab/1 UPnP/1.1 portmapd/1\r\n"
                  f"LOCATION: http://{self.server.lan_ip}:{HTTP_PORT}{DESC_PATH}\r\n\r\n")
        self.ssdp.sendto(answer.encode(), (src, port))

    def on_http(self) -> None:
        try:
            conn, (src, _port) = self.http.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(2.0)
            try:
                request = self._read(conn)
                status, body = self._answer(request, src) if self._on_lan(src) \
                    else (403, "")
                reason = {200: "OK", 403: "Forbidden", 404: "Not Found",
                          500: "Internal Server Error"}.get(status, "Bad Request")
                payload = body.encode()
                conn.sendall((f"HTTP/1.1 {status} {reason}\r\n"
                              'Content-Type: text/xml; charset="utf-8"\r\n'
                              f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
                              ).encode() + payload)
            except (OSError, ValueError):
                return

    def _on_lan(self, src: str) -> bool:
        return ipaddress.ip_address(src) in self.server.lan_net

    @staticmethod
    def _read(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk or len(data) > MAX_REQUEST:
                raise ValueError("incomplete request")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        m = re.search(rb"\r\ncontent-length: *(\d{1,5})\r?", head + b"\r\n", re.IGNORECASE)
        want = int(m.group(1)) if m else 0
        if want > MAX_REQUEST:
            raise ValueError("request too long")
        while len(body) < want:
            chunk = conn.recv(4096)
            if not chunk:
                raise ValueError("incomplete body")
            body += chunk
        return head + b"\r\n\r\n" + body

    def _answer(self, request: bytes, src: str) -> tuple[int, str]:
        line = request.split(b"\r\n", 1)[0].decode("ascii", "replace")
        if line.startswith(f"GET {DESC_PATH} "):
            return 200, DESCRIPTION
        if not line.startswith(f"POST {CONTROL_PATH} "):
            return 404, ""
        m = re.search(rb'\r\nSOAPAction: *"?([^"#\r]+)#(\w+)"?', request, re.IGNORECASE)
        if m is None or m.group(1).decode() != SERVICE:
            return 500, _fault(401, "Invalid Action")
        action = m.group(2).decode()
        args = {k.decode(): v.decode() for k, v in
                re.findall(rb"<(New\w{1,40})>([^<]{0,100})</New\w{1,40}>", request)}
        if action == "GetExternalIPAddress":
            return 200, _soap(action, f"<NewExternalIPAddress>{self.server.wan_ip}"
                                      "</NewExternalIPAddress>")
        if action == "AddPortMapping":
            return self._add(args, src)
        if action == "DeletePortMapping":
            return self._delete(args, src)
        return 500, _fault(401, "Invalid Action")

    def _add(self, args: dict[str, str], src: str) -> tuple[int, str]:
        try:
            protocol = args["NewProtocol"].lower()
            external, internal = int(args["NewExternalPort"]), int(args["NewInternalPort"])
            lease, client = int(args.get("NewLeaseDuration", "0")), args["NewInternalClient"]
        except (KeyError, ValueError):
            return 500, _fault(402, "Invalid Args")
        if protocol not in ("tcp", "udp") or not 0 < internal < 65536:
            return 500, _fault(402, "Invalid Args")
        if external == 0:
            return 500, _fault(716, "WildCardNotPermittedInExtPort")
        if not 1024 <= external < 65536 or lease < 0:
            return 500, _fault(402, "Invalid Args")
        if client != src:
            self.server.refused("upnp", src, 606)
            return 500, _fault(606, "Action not authorized")
        key = (protocol, src, internal)
        taken = [k for k, g in self.server.grants.items()
                 if g.protocol == protocol and g.external_port == external and k != key]
        held = self.server.grants.get(key)
        if taken or (held is not None and held.external_port != external):
            self.server.refused("upnp", src, 718)
            return 500, _fault(718, "ConflictInMappingEntry")
        lifetime = lease or self.server.max_lifetime
        if self.server.grant(protocol, src, internal, external, lifetime, None, "upnp") is None:
            return 500, _fault(501, "Action Failed")
        return 200, _soap("AddPortMapping", "")

    def _delete(self, args: dict[str, str], src: str) -> tuple[int, str]:
        try:
            protocol, external = args["NewProtocol"].lower(), int(args["NewExternalPort"])
        except (KeyError, ValueError):
            return 500, _fault(402, "Invalid Args")
        for key, g in list(self.server.grants.items()):
            if g.protocol == protocol and g.external_port == external and g.internal_ip == src:
                self.server.delete(key, "upnp")
                return 200, _soap("DeletePortMapping", "")
        return 500, _fault(714, "NoSuchEntryInArray")
