"""QUIC carrying one bidirectional stream, sans-IO: :class:`QuicStreamCore` over aioquic's
``QuicConnection`` (explicit ``now``, no asyncio), and the QUIC configuration of media paths
(ALPN, preamble, windows, an in-memory self-signed certificate on the server side)."""

from __future__ import annotations

import datetime
import ssl
from collections import deque

from aioquic import tls
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from overlay.core.addresses import Address
from overlay.media.errors import PathLost
from overlay.media.quic.congestion import CONGESTION_CONTROL

#: a path whose client waits for the handshake (the server opens the stream, 0.5-RTT)
ALPN = "overlay-media/1"
#: a path whose client sends its stream bytes in its first flight (0-RTT) under the session's
#: pre-shared key (:mod:`.ticket`); both ends close it unless the handshake resumed that key
ALPN_ZERO_RTT = "overlay-media/2"
#: how many times a 0-RTT client sends each datagram before its handshake completes
FIRST_FLIGHT_COPIES = 2
#: a client's presence capability: it takes :data:`ALPN_ZERO_RTT` paths
ZERO_RTT_CAPABILITY = "media-0rtt"
PREAMBLE = b"OVLQ\x00\x00\x00\x01"
#: the TLS server name both ends use (no certificate is checked against it)
SERVER_NAME = "overlay-media"
IDLE_TIMEOUT_S = 30.0
#: UDP payload size; 1350 fits under any usual path MTU (1500, PPPoE, most VPNs)
MAX_DATAGRAM_SIZE = 1350
#: stream and connection receive windows (bytes in flight the peer may send ahead)
RECEIVE_WINDOW = 4 * 1024 * 1024
#: the one stream under :data:`ALPN`: the first server-initiated bidirectional stream (RFC
#: 9000 §2.1). The server (the callee) opens it the moment it has read the ClientHello, so its
#: first bytes (the preamble, then its path salt and ``CONFIRM``) go out as 0.5-RTT data with
#: its handshake flight, and the client can select the path as its handshake completes.
SERVER_STREAM_ID = 1
#: the one stream under :data:`ALPN_ZERO_RTT`: the first client-initiated bidirectional
#: stream, which the client opens (preamble first) in its first flight
CLIENT_STREAM_ID = 0
#: our QUIC connection ids are this long (short headers do not carry a length)
QUIC_CID_BYTES = 8
#: the largest DATAGRAM frame (RFC 9221) we accept, advertised in the transport parameters:
#: a call frame (at most 1200 bytes) fits; a larger one closes the connection
MAX_DATAGRAM_FRAME_BYTES = 1250
#: the largest payload we send in one: what the peer's limit must allow with the frame's
#: type and length (4 bytes at most)
MAX_DATAGRAM_PAYLOAD_BYTES = 1200
#: DATAGRAM frames received and not yet taken (the oldest go first), and the most waiting
#: unsent in the connection before :meth:`QuicStreamCore.send_datagram` refuses (no backlog)
MAX_RECEIVED_DATAGRAMS = 64
MAX_PENDING_DATAGRAMS = 3


class QuicPathError(PathLost):
    """The QUIC connection could not be set up, or ended abnormally."""


def self_signed_certificate() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A fresh P-256 key and a self-signed certificate for it, in memory only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "overlay-media")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert, key


def configuration(is_client: bool, idle_timeout: float = IDLE_TIMEOUT_S,
                  congestion_control: str = CONGESTION_CONTROL,
                  session_ticket: tls.SessionTicket | None = None) -> QuicConfiguration:
    """A media path's QUIC configuration. A client given the session's ``session_ticket``
    (:func:`.ticket.session_ticket`) speaks :data:`ALPN_ZERO_RTT` only, else :data:`ALPN`
    only; a server takes either (a client's one protocol decides)."""
    if is_client:
        alpn = [ALPN_ZERO_RTT] if session_ticket is not None else [ALPN]
    else:
        alpn = [ALPN_ZERO_RTT, ALPN]
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=alpn,
        idle_timeout=idle_timeout,
        connection_id_length=QUIC_CID_BYTES,
        max_datagram_size=MAX_DATAGRAM_SIZE,
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_BYTES,
        max_data=RECEIVE_WINDOW,
        max_stream_data=RECEIVE_WINDOW,
        congestion_control_algorithm=congestion_control,
        verify_mode=ssl.CERT_NONE,
        server_name=SERVER_NAME,
        session_ticket=session_ticket if is_client else None,
    )
    if not is_client:
        config.certificate, config.private_key = self_signed_certificate()
    return config


class QuicStreamCore:
    """Sans-IO: a ``QuicConnection`` carrying one bidirectional stream.

    aioquic's vocabulary: feed it with :meth:`receive_datagram` and :meth:`handle_timer`;
    collect :meth:`datagrams_to_send`; :meth:`get_timer` says when the timer is due.
    Received stream bytes accumulate in ``received``; ``fin_received``, ``handshake_done``,
    ``stream_open`` and ``error`` describe the state. ``new_cids`` and ``retired_cids`` list
    connection ids the socket must start or stop routing here.

    Under :data:`ALPN` the server opens stream 1 with the preamble (0.5-RTT) and the client
    writes once it checked it. Under :data:`ALPN_ZERO_RTT` (a client whose configuration
    holds the session ticket) the client opens stream 0 with the preamble at :meth:`connect`
    and may write at once (0-RTT); the server closes the connection at the ClientHello unless
    it resumed the ticket, writes once it checked the client's preamble, and the client
    closes it at the end of the handshake unless it resumed.
    """

    def __init__(self, conn: QuicConnection, is_client: bool) -> None:
        self.conn = conn
        self.is_client = is_client
        self.received = bytearray()
        self.fin_received = False
        self.handshake_done = False
        #: the stream may be written (the server opened it, or a 0-RTT client did) and what
        #: arrives on it is the peer's (its opener's preamble checked out)
        self.stream_open = False
        #: the path runs under :data:`ALPN_ZERO_RTT` (a server knows once it read the Hello)
        self.zero_rtt = is_client and conn.configuration.session_ticket is not None
        self.stream_id = CLIENT_STREAM_ID if self.zero_rtt else SERVER_STREAM_ID
        self.error: str | None = None
        self.terminated = False
        self.new_cids: list[bytes] = []
        self.retired_cids: list[bytes] = []
        #: DATAGRAM frames received (unreliable, beside the stream), bounded
        self.datagrams: deque[bytes] = deque(maxlen=MAX_RECEIVED_DATAGRAMS)
        self._preamble = bytearray()
        self._fin_sent = False
        self._ping_uid = 0

    # -- driving ---------------------------------------------------------------------------

    def connect(self, addr: Address, now: float) -> None:
        """Client: start the handshake (under :data:`ALPN` the server opens the stream; under
        :data:`ALPN_ZERO_RTT` we do, and what we write goes with the first flight)."""
        self.conn.connect(addr, now=now)
        if self.zero_rtt:
            self.conn.send_stream_data(CLIENT_STREAM_ID, PREAMBLE)
            self.stream_open = True

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.conn.receive_datagram(data, addr, now=now)
        self._process()

    def handle_timer(self, now: float) -> None:
        self.conn.handle_timer(now=now)
        self._process()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """What is due. A 0-RTT client sends each datagram twice until its handshake is done
        (:data:`FIRST_FLIGHT_COPIES`): a loss there costs a whole PTO (no RTT sample yet, and
        the transfer waits for the callee's READY, so nothing later reveals the loss: 1.2 to
        3.4 s on a 400 ms path), against a few kilobytes once per path."""
        out = [(d, (str(a[0]), int(a[1]))) for d, a in self.conn.datagrams_to_send(now=now)]
        if self.zero_rtt and self.is_client and not self.handshake_done:
            return [item for item in out for _ in range(FIRST_FLIGHT_COPIES)]
        return out

    def get_timer(self) -> float | None:
        return self.conn.get_timer()

    def ping(self) -> None:
        if not self.terminated:
            self._ping_uid += 1
            self.conn.send_ping(self._ping_uid)

    # -- the stream ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.terminated:
            raise QuicPathError(self.error or "the connection is closed")
        if self._fin_sent:
            raise QuicPathError("send after close")
        if not self.stream_open:
            raise QuicPathError("the stream is not open yet")
        self.conn.send_stream_data(self.stream_id, data)

    def finish(self) -> None:
        """Send FIN (once)."""
        if self._fin_sent or self.terminated or not self.stream_open:
            return
        self._fin_sent = True
        self.conn.send_stream_data(self.stream_id, b"", end_stream=True)

    def datagrams_supported(self, size: int = MAX_DATAGRAM_PAYLOAD_BYTES) -> bool:
        """The peer takes DATAGRAM frames of ``size`` bytes (its transport parameter)."""
        remote = self.conn._remote_max_datagram_frame_size  # aioquic keeps it private
        return self.handshake_done and remote is not None and remote >= size + 4

    def send_datagram(self, data: bytes) -> bool:
        """Queue ``data`` as one DATAGRAM frame; False (dropped) when the peer takes none
        of its size, the connection is closed, or :data:`MAX_PENDING_DATAGRAMS` still wait
        unsent (congestion: a real-time frame is dropped, never queued)."""
        if self.terminated or len(data) > MAX_DATAGRAM_PAYLOAD_BYTES \
                or not self.datagrams_supported(len(data)) \
                or len(self.conn._datagrams_pending) >= MAX_PENDING_DATAGRAMS:
            return False
        self.conn.send_datagram_frame(data)
        return True

    def unacknowledged(self) -> int:
        """Bytes written but not yet acknowledged by the peer (including unsent ones)."""
        stream = self.conn._streams.get(self.stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return int(sender._buffer_stop - sender._buffer_start)

    def all_acknowledged(self) -> bool:
        """Everything, FIN included, reached the peer."""
        stream = self.conn._streams.get(self.stream_id)
        return stream is None or stream.sender.is_finished

    def close(self, error: str | None = None) -> None:
        if self.terminated:
            return
        if error is None:
            self.conn.close(error_code=QuicErrorCode.NO_ERROR)
        else:
            self.conn.close(error_code=QuicErrorCode.APPLICATION_ERROR, reason_phrase=error)
            self.error = self.error or error

    # -- events ----------------------------------------------------------------------------

    def _process(self) -> None:
        while (event := self.conn.next_event()) is not None:
            if isinstance(event, events.ProtocolNegotiated):
                # server: the ClientHello is read (the client's transport parameters too)
                # and the 1-RTT keys are there
                if not self.is_client and not self.stream_open:
                    self._negotiated(event.alpn_protocol)
            elif isinstance(event, events.HandshakeCompleted):
                if event.alpn_protocol != (ALPN_ZERO_RTT if self.zero_rtt else ALPN):
                    self.close(f"ALPN {event.alpn_protocol!r}")
                elif self.zero_rtt and not event.session_resumed:
                    self.close("0-RTT path without the session's key")
                else:
                    self.handshake_done = True
            elif isinstance(event, events.StreamDataReceived):
                if event.stream_id == self.stream_id:
                    self._stream_data(event.data, event.end_stream)
            elif isinstance(event, events.StreamReset):
                if event.stream_id == self.stream_id:
                    self.error = self.error or f"stream reset by the peer ({event.error_code})"
                    self.close(self.error)
            elif isinstance(event, events.ConnectionTerminated):
                self.terminated = True
                if event.error_code != QuicErrorCode.NO_ERROR or not self.fin_received:
                    self.error = self.error or (
                        f"connection closed (code {event.error_code}"
                        + (f": {event.reason_phrase}" if event.reason_phrase else "") + ")")
            elif isinstance(event, events.DatagramFrameReceived):
                self.datagrams.append(event.data)
            elif isinstance(event, events.ConnectionIdIssued):
                self.new_cids.append(event.connection_id)
            elif isinstance(event, events.ConnectionIdRetired):
                self.retired_cids.append(event.connection_id)

    def _negotiated(self, alpn: str | None) -> None:
        """Server: under :data:`ALPN`, open the stream (0.5-RTT); under
        :data:`ALPN_ZERO_RTT`, take the client's, or close when the Hello did not resume the
        session's ticket (its sender does not hold the session's key: nothing is written)."""
        if alpn == ALPN:
            self.conn.send_stream_data(SERVER_STREAM_ID, PREAMBLE)
            self.stream_open = True
        elif alpn == ALPN_ZERO_RTT:
            self.zero_rtt = True
            self.stream_id = CLIENT_STREAM_ID
            if not self.conn.tls.session_resumed:
                self.close("0-RTT path without the session's key")

    def _stream_data(self, data: bytes, end: bool) -> None:
        if not self.stream_open:
            need = len(PREAMBLE) - len(self._preamble)
            self._preamble += data[:need]
            data = data[need:]
            if len(self._preamble) < len(PREAMBLE):
                if end:
                    self.close("stream ended inside the preamble")
                return
            if bytes(self._preamble) != PREAMBLE:
                self.close("not an overlay media stream")
                return
            self.stream_open = True
        self.received += data
        if end:
            self.fin_received = True


