"""The messages a client exchanges with its router to get a port mapping (sans-IO): PCP MAP
(RFC 6887) and NAT-PMP (RFC 6886), as typed dataclasses with ``encode()`` for requests and
one strict :func:`decode_response` for whatever comes back on UDP port 5351.

Layouts (all integers big-endian):

- NAT-PMP external address request ``version 0 | op 0`` (2 bytes); answer
  ``0 | 128 | result(2) | epoch(4) | external IPv4(4)`` (12 bytes).
- NAT-PMP map request ``0 | op (1 UDP, 2 TCP) | reserved(2) | internal port(2) |
  suggested external port(2) | lifetime(4)`` (12 bytes); answer ``0 | 128+op | result(2) |
  epoch(4) | internal port(2) | external port(2) | lifetime(4)`` (16 bytes). An error answer
  may stop after the epoch (8 bytes), like the "unsupported version" answer a NAT-PMP-only
  router gives to a PCP request.
- PCP request header ``version 2 | R=0,opcode | reserved(2) | lifetime(4) | client IP(16)``
  and response header ``2 | R=1,opcode | reserved | result | lifetime(4) | epoch(4) |
  reserved(12)`` (24 bytes each); the MAP payload is ``nonce(12) | protocol | reserved(3) |
  internal port(2) | (suggested / assigned) external port(2) | external IP(16)`` (36 bytes).
  IPv4 addresses travel as IPv4-mapped IPv6. A response is 24..1100 bytes, a multiple of 4;
  options after the payload are ignored (we send none).

Every length is checked before a field is read; anything else raises
:class:`BadPortMapMessage` (a :class:`~overlay.media.errors.MediaError`), never anything else.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Literal

from overlay.media.errors import MediaError

PORT = 5351
PMP_VERSION = 0
PCP_VERSION = 2
PCP_OP_ANNOUNCE = 0
PCP_OP_MAP = 1
PMP_OP_EXTERNAL = 0
PCP_HEADER_BYTES = 24
PCP_MAP_BYTES = PCP_HEADER_BYTES + 36
PCP_MAX_BYTES = 1100
NONCE_BYTES = 12

Protocol = Literal["tcp", "udp"]
#: IANA protocol numbers (PCP) and NAT-PMP opcodes of each protocol
IANA = {"tcp": 6, "udp": 17}
PMP_OPS = {"udp": 1, "tcp": 2}

#: result codes (0 is success in both)
PMP_UNSUPPORTED_VERSION = 1
PCP_RESULTS = {
    0: "SUCCESS", 1: "UNSUPP_VERSION", 2: "NOT_AUTHORIZED", 3: "MALFORMED_REQUEST",
    4: "UNSUPP_OPCODE", 5: "UNSUPP_OPTION", 6: "MALFORMED_OPTION", 7: "NETWORK_FAILURE",
    8: "NO_RESOURCES", 9: "UNSUPP_PROTOCOL", 10: "USER_EX_QUOTA",
    11: "CANNOT_PROVIDE_EXTERNAL", 12: "ADDRESS_MISMATCH", 13: "EXCESSIVE_REMOTE_PEERS",
}
PMP_RESULTS = {0: "SUCCESS", 1: "UNSUPPORTED_VERSION", 2: "NOT_AUTHORIZED",
               3: "NETWORK_FAILURE", 4: "OUT_OF_RESOURCES", 5: "UNSUPPORTED_OPCODE"}


class PortMapError(MediaError):
    """Port mapping could not be used (the router refused, or does not answer)."""


class BadPortMapMessage(PortMapError):
    """A datagram on the port-mapping port that is not a well-formed PCP/NAT-PMP answer."""


def _ip16(ip: str) -> bytes:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv4Address):
        return bytes(10) + b"\xff\xff" + addr.packed
    return addr.packed


def _ip_from16(raw: bytes) -> str:
    addr = ipaddress.IPv6Address(raw)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped is not None else str(addr)


def _port(value: int, what: str, zero_ok: bool = True) -> int:
    if not (0 if zero_ok else 1) <= value <= 0xFFFF:
        raise ValueError(f"{what} out of range: {value}")
    return value


# -- requests ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PcpMapRequest:
    """PCP MAP: map ``internal_port`` of ``client_ip`` for ``lifetime`` seconds (0 deletes)."""

    nonce: bytes
    protocol: Protocol
    internal_port: int
    lifetime: int
    client_ip: str
    suggested_port: int = 0
    suggested_ip: str = "0.0.0.0"

    def encode(self) -> bytes:
        if len(self.nonce) != NONCE_BYTES:
            raise ValueError("a PCP mapping nonce is 12 bytes")
        _port(self.internal_port, "internal port", zero_ok=False)
        _port(self.suggested_port, "suggested port")
        return (struct.pack("!BBHI", PCP_VERSION, PCP_OP_MAP, 0, self.lifetime)
                + _ip16(self.client_ip) + self.nonce
                + struct.pack("!B3xHH", IANA[self.protocol], self.internal_port,
                              self.suggested_port)
                + _ip16(self.suggested_ip))


@dataclass(frozen=True)
class PmpMapRequest:
    """NAT-PMP map request (``lifetime`` 0 deletes)."""

    protocol: Protocol
    internal_port: int
    lifetime: int
    suggested_port: int = 0

    def encode(self) -> bytes:
        _port(self.internal_port, "internal port", zero_ok=False)
        _port(self.suggested_port, "suggested port")
        return struct.pack("!BBHHHI", PMP_VERSION, PMP_OPS[self.protocol], 0,
                           self.internal_port, self.suggested_port, self.lifetime)


@dataclass(frozen=True)
class PmpExternalRequest:
    """NAT-PMP: what is the router's external address?"""

    def encode(self) -> bytes:
        return bytes([PMP_VERSION, PMP_OP_EXTERNAL])


# -- responses -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PcpMapResponse:
    result: int
    lifetime: int
    epoch: int
    #: the MAP payload; None in an error answer that carries none (24 bytes)
    nonce: bytes | None = None
    protocol: int = 0
    internal_port: int = 0
    external_port: int = 0
    external_ip: str = ""


@dataclass(frozen=True)
class PcpOtherResponse:
    """A PCP answer to something other than MAP (ANNOUNCE, say): only its header."""

    opcode: int
    result: int
    lifetime: int
    epoch: int


@dataclass(frozen=True)
class PmpMapResponse:
    protocol: Protocol
    result: int
    epoch: int
    internal_port: int = 0
    external_port: int = 0
    lifetime: int = 0


@dataclass(frozen=True)
class PmpExternalResponse:
    result: int
    epoch: int
    external_ip: str = ""


@dataclass(frozen=True)
class PmpErrorResponse:
    """A short NAT-PMP error answer (8 bytes): e.g. "unsupported version" to a PCP request."""

    opcode: int
    result: int
    epoch: int


Response = PcpMapResponse | PcpOtherResponse | PmpMapResponse | PmpExternalResponse \
    | PmpErrorResponse


def decode_response(data: bytes) -> Response:
    """One answer from the router; :class:`BadPortMapMessage` when it is not one."""
    if len(data) < 2:
        raise BadPortMapMessage("shorter than a version and an opcode")
    version = data[0]
    if version == PMP_VERSION:
        return _decode_pmp(data)
    if version == PCP_VERSION:
        return _decode_pcp(data)
    raise BadPortMapMessage(f"unknown version {version}")


def _decode_pmp(data: bytes) -> Response:
    op = data[1]
    if op < 128:
        raise BadPortMapMessage("a NAT-PMP request, not an answer")
    op -= 128
    if len(data) < 8:
        raise BadPortMapMessage("a NAT-PMP answer is at least 8 bytes")
    result, epoch = struct.unpack_from("!HI", data, 2)
    if len(data) == 8:
        if result == 0:
            raise BadPortMapMessage("a successful NAT-PMP answer is longer than 8 bytes")
        return PmpErrorResponse(op, result, epoch)
    if op == PMP_OP_EXTERNAL:
        if len(data) != 12:
            raise BadPortMapMessage("a NAT-PMP external address answer is 12 bytes")
        ip = str(ipaddress.IPv4Address(data[8:12])) if result == 0 else ""
        return PmpExternalResponse(result, epoch, ip)
    protocol: Protocol
    if op == PMP_OPS["udp"]:
        protocol = "udp"
    elif op == PMP_OPS["tcp"]:
        protocol = "tcp"
    else:
        raise BadPortMapMessage(f"unknown NAT-PMP opcode {op}")
    if len(data) != 16:
        raise BadPortMapMessage("a NAT-PMP map answer is 16 bytes")
    internal, external, lifetime = struct.unpack_from("!HHI", data, 8)
    return PmpMapResponse(protocol, result, epoch, internal, external, lifetime)


def _decode_pcp(data: bytes) -> Response:
    if not PCP_HEADER_BYTES <= len(data) <= PCP_MAX_BYTES or len(data) % 4:
        raise BadPortMapMessage("a PCP answer is 24..1100 bytes, a multiple of 4")
    r_op, result = data[1], data[3]
    if not r_op & 0x80:
        raise BadPortMapMessage("a PCP request, not an answer")
    opcode = r_op & 0x7F
    lifetime, epoch = struct.unpack_from("!II", data, 4)
    if opcode != PCP_OP_MAP:
        return PcpOtherResponse(opcode, result, lifetime, epoch)
    if len(data) < PCP_MAP_BYTES:
        if result == 0:
            raise BadPortMapMessage("a successful PCP MAP answer carries the MAP payload")
        return PcpMapResponse(result, lifetime, epoch)
    body = data[PCP_HEADER_BYTES:PCP_MAP_BYTES]
    nonce = bytes(body[:NONCE_BYTES])
    protocol, internal, external = struct.unpack_from("!B3xHH", body, NONCE_BYTES)
    return PcpMapResponse(result, lifetime, epoch, nonce, protocol, internal, external,
                          _ip_from16(bytes(body[20:36])))


def result_name(version: int, result: int) -> str:
    names = PCP_RESULTS if version == PCP_VERSION else PMP_RESULTS
    return names.get(result, f"result {result}")
