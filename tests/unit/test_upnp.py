"""UPnP IGD port mapping: the strict codecs (sans-IO) and the asyncio client against the
lab's real IGD (``tools/natlab/portmapd.py --methods upnp``) on a loopback address."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from overlay.media.portmap_io import PortMaps
from overlay.media.upnp_io import UpnpMapping, discover
from overlay.media.upnp_wire import (
    MAX_HTTP_BYTES,
    BadUpnpMessage,
    HttpAnswer,
    UpnpFault,
    WanService,
    find_wan_service,
    msearch,
    parse_http_answer,
    parse_soap_answer,
    parse_ssdp_answer,
    soap_request,
)
from tests.helpers.repo import REPO
from tests.unit.test_portmap import loopback_address

SSDP_OK = (b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: ssdp:all\r\n"
           b"LOCATION: http://192.168.1.1:5000/rootDesc.xml\r\n\r\n")
DESC = (b'<?xml version="1.0"?><root xmlns="urn:schemas-upnp-org:device-1-0"><device>'
        b"<serviceList><service><serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1"
        b"</serviceType><controlURL>/ppp</controlURL></service></serviceList><deviceList>"
        b"<device><serviceList><service><serviceType>"
        b"urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>"
        b"<controlURL>http://10.9.9.9:80/ctl/IP</controlURL></service></serviceList></device>"
        b"</deviceList></device></root>")
FAULT = (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>'
         b'<detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>725'
         b"</errorCode><errorDescription>OnlyPermanentLeasesSupported</errorDescription>"
         b"</UPnPError></detail></s:Fault></s:Body></s:Envelope>")
SERVICE = WanService("urn:schemas-upnp-org:service:WANIPConnection:1", "/ctl/IP")


def test_msearch_and_ssdp_answer() -> None:
    assert msearch("ssdp:all") == (b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n"
                                   b'ST: ssdp:all\r\nMAN: "ssdp:discover"\r\nMX: 2\r\n\r\n')
    answer = parse_ssdp_answer(SSDP_OK)
    assert (answer.port, answer.path) == (5000, "/rootDesc.xml")  # the host is never used


def test_description_picks_the_ip_service_and_keeps_only_the_path() -> None:
    service = find_wan_service(DESC)
    assert service == WanService("urn:schemas-upnp-org:service:WANIPConnection:1", "/ctl/IP")


def test_soap_request_and_answers() -> None:
    req = soap_request("192.168.1.1", 5000, SERVICE, "AddPortMapping",
                       (("NewPortMappingDescription", "a<b&"),))
    assert req.startswith(b"POST /ctl/IP HTTP/1.1\r\nHost: 192.168.1.1:5000\r\n")
    assert b'SOAPAction: "urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping"' in req
    assert b"<NewPortMappingDescription>a&lt;b&amp;</NewPortMappingDescription>" in req
    ok = (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
          b'<u:GetExternalIPAddressResponse xmlns:u="x"><NewExternalIPAddress>198.18.0.9'
          b"</NewExternalIPAddress></u:GetExternalIPAddressResponse></s:Body></s:Envelope>")
    assert parse_soap_answer(HttpAnswer(200, ok), "GetExternalIPAddress") == {
        "NewExternalIPAddress": "198.18.0.9"}
    with pytest.raises(UpnpFault) as fault:
        parse_soap_answer(HttpAnswer(500, FAULT), "AddPortMapping")
    assert fault.value.code == 725
    with pytest.raises(BadUpnpMessage):  # an answer to another action
        parse_soap_answer(HttpAnswer(200, ok), "AddPortMapping")


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 404 Not Found\r\nLOCATION: http://1.2.3.4/\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nST: x\r\n\r\n",                        # no LOCATION
    b"HTTP/1.1 200 OK\r\nLOCATION: https://1.2.3.4/\r\n\r\n",     # not http://
    b"HTTP/1.1 200 OK\r\nLOCATION: /relative\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nLOCATION: http://1.2.3.4:99999/\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nLOC\xffATION: http://1.2.3.4/\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"A: b\r\n" * 100 + b"\r\n",
    SSDP_OK[:-4],                                                   # no end of headers
    SSDP_OK + b"x" * 2048,                                          # too long
])
def test_hostile_ssdp_answers_raise_only_the_typed_error(data: bytes) -> None:
    with pytest.raises(BadUpnpMessage):
        parse_ssdp_answer(data)


LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">'
          b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><root>&b;</root>')


@pytest.mark.parametrize("body", [
    LAUGHS,                                              # entities: refused before parsing
    b'<!DOCTYPE root SYSTEM "file:///etc/passwd"><root/>',
    b"<root><![CDATA[x]]></root>",
    b'<?xml version="1.0" encoding="no-such"?><root/>',
    "<!DOCTYPE r [<!ENTITY a 'x'>]><r>&a;</r>".encode("utf-16"),  # a DOCTYPE in UTF-16
    b"<root>&undefined;</root>",
    b"<root><service>",                                  # not well-formed
    b"<root/>",                                          # no WAN service
    b"<root>" + b" " * MAX_HTTP_BYTES + b"</root>",
])
def test_hostile_descriptions_raise_only_the_typed_error(body: bytes) -> None:
    with pytest.raises(BadUpnpMessage):
        find_wan_service(body)


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"SSH-2.0-OpenSSH\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * MAX_HTTP_BYTES,
])
def test_hostile_http_answers_raise_only_the_typed_error(data: bytes) -> None:
    with pytest.raises(BadUpnpMessage):
        parse_http_answer(data)


# -- against the lab's IGD ---------------------------------------------------------------------


@pytest.fixture
def igd_router() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """portmapd speaking UPnP IGD only (nothing on port 5351), granting at most 2 s."""
    listen = loopback_address()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tools/natlab/portmapd.py"), "--listen", listen,
         "--lan-net", "127.0.0.0/8", "--wan-if", "lo", "--wan-ip", "198.18.0.99",
         "--max-lifetime", "2", "--no-nft", "--methods", "upnp"],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["event"] == "ready"
    try:
        yield listen, proc
    finally:
        proc.terminate()
        proc.wait(5)


def events(proc: subprocess.Popen[str]) -> list[dict[str, object]]:
    proc.terminate()
    assert proc.stdout is not None
    return [json.loads(line) for line in proc.stdout.read().splitlines()]


def test_upnp_mapping_is_granted_renewed_and_deleted(
    igd_router: tuple[str, subprocess.Popen[str]]
) -> None:
    listen, proc = igd_router

    async def run() -> UpnpMapping:
        igd = await discover(listen)
        assert igd is not None and igd.gateway == listen and igd.port == 5000
        mapping = UpnpMapping.open(igd, "udp", 45680, lease=2)
        async with asyncio.timeout(3):
            await mapping.settled.wait()
        assert mapping.mapping is not None and mapping.mapping.method == "upnp"
        assert mapping.mapping.external == ("198.18.0.99", 45680)
        async with asyncio.timeout(3):  # renewed at half of 2 s
            while mapping.renewals == 0:  # noqa: ASYNC110 (a counter, polled with a deadline)
                await asyncio.sleep(0.05)
        await mapping.close()
        return mapping

    mapping = asyncio.run(run())
    assert mapping.state == "closed" and mapping.to_json()["method"] == "upnp"
    seen = [(e["event"], e.get("via")) for e in events(proc)]
    assert seen[:3] == [("map", "upnp"), ("renew", "upnp"), ("delete", "upnp")], seen


def test_port_maps_fall_back_to_upnp_when_pcp_and_nat_pmp_are_not_spoken(
    igd_router: tuple[str, subprocess.Popen[str]]
) -> None:
    listen, proc = igd_router

    async def run() -> dict[str, object]:
        maps = PortMaps()
        await maps.start(listen, 45681, 45682)
        await maps.wait_settled(4)
        assert maps.mapped("tcp") == (("198.18.0.99", 45681),)
        assert maps.mapped("udp") == (("198.18.0.99", 45682),)
        status = maps.to_json()
        await maps.close()
        return status

    status = asyncio.run(run())
    assert status["tcp"]["method"] == "upnp" and status["udp"]["state"] == "mapped", status  # type: ignore[index]
    seen = [e["event"] for e in events(proc)]
    assert seen.count("map") == 2 and seen.count("delete") == 2, seen


def test_no_igd_is_unavailable_at_once() -> None:
    async def run() -> None:
        async with asyncio.timeout(1.0):  # ICMP port unreachable: no waiting for answers
            assert await discover(loopback_address()) is None

    asyncio.run(run())
