"""QUIC on a punched UDP path: one bidirectional stream as a ByteStream (``path = "udp-punch"``).

After :func:`overlay.media.punch.punch` both clients know each other's address as seen through
their NATs. The initiator (the invite's sender) is the QUIC client, the other side the QUIC
server, both on their :class:`~overlay.media.punch.MediaSocket`, so QUIC packets take the very
holes the probes opened. aioquic's sans-IO ``QuicConnection`` does the protocol;
:class:`QuicStreamCore` (sans-IO, explicit ``now``) adds the one-stream logic;
:class:`QuicByteStream` is the thin asyncio adapter.

Security: QUIC's TLS here is transport encryption only. The server presents an ephemeral
self-signed certificate made in memory for this connection and the client does not verify it
(``verify_mode=CERT_NONE``): nobody's identity is, or could be, bound to it. Authentication and
end-to-end encryption come from :func:`overlay.media.secure_stream.secure` run on top of the
returned stream with the invite/answer keys; a man in the middle of the QUIC layer ends up
holding a stream on which that confirmation never completes.

The stream: the client opens stream 0 with an 8-byte preamble (``PREAMBLE``), which the server
checks and strips, so the server may send as soon as the stream exists. ``send`` applies
back-pressure while more than ``SEND_HIGH_WATER`` bytes are unsent or unacknowledged;
``recv`` returns ``b""`` after the peer's FIN; ``close`` sends FIN, waits until everything
sent was acknowledged (giving up after ``CLOSE_STALL_S`` without progress), then closes the
connection with NO_ERROR. A PING every ``KEEPALIVE_S`` keeps NAT mappings and the idle timer
alive.

Congestion control: :class:`MediaCongestionControl` (``"overlay-bbr"``, BBR-like), because a
loss-based controller collapses on long paths with random loss; ``congestion_control="cubic"``
(or ``"reno"``) selects aioquic's own. One place reads aioquic's private state:
:meth:`QuicStreamCore.unacknowledged` / ``all_acknowledged`` look at the stream's send buffer
(aioquic offers no back-pressure of its own); pinned by the tests.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.congestion.base import QuicCongestionControl, register_congestion_control
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode, QuicHeader
from aioquic.quic.packet_builder import QuicSentPacket
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from overlay.media.punch import QUIC_CID_BYTES, Address, MediaSocket, punch, punch_key

ALPN = "overlay-media/1"
PREAMBLE = b"OVLQ\x00\x00\x00\x01"
PATH_NAME = "udp-punch"
IDLE_TIMEOUT_S = 30.0
KEEPALIVE_S = 10.0
CONNECT_TIMEOUT_S = 5.0
#: ``send`` waits while more than this is unsent or unacknowledged
SEND_HIGH_WATER = 512 * 1024
#: ``close`` gives up waiting for acknowledgements after this long without progress
CLOSE_STALL_S = 10.0
#: UDP payload size; 1350 fits under any usual path MTU (1500, PPPoE, most VPNs)
MAX_DATAGRAM_SIZE = 1350
#: stream and connection receive windows (bytes in flight the peer may send ahead)
RECEIVE_WINDOW = 4 * 1024 * 1024
CONGESTION_CONTROL = "overlay-bbr"
STREAM_ID = 0


class MediaCongestionControl(QuicCongestionControl):
    """A BBR-like congestion controller for media paths (registered as ``"overlay-bbr"``).

    Loss-based controllers (Reno, CUBIC) read every lost packet as congestion: on a path with
    a few percent of random loss and a long RTT (Wi-Fi, mobile, far peers) they keep the window
    at a handful of packets; 1 MiB over 400 ms RTT and 4 % loss took 30 s with CUBIC. This one
    follows BBR v1 in a simplified form. It measures the delivery rate (the maximum over the
    last 10 round trips) and the minimum RTT, and keeps ``2 x rate x min_rtt`` in flight;
    aioquic's pacer spreads the packets over the smoothed RTT.

    - Startup: the window is ``2.89 x rate x min_rtt`` (at least the initial window), so it
      grows by up to 2.89x per round trip while the measured rate grows; it ends when the rate
      grew by less than 25 % for three rounds, or on heavy loss.
    - Steady: ``2 x rate x min_rtt``. Sending up to twice the measured rate when the queue is
      empty keeps probing for more bandwidth.
    - Probe RTT: when the minimum RTT was not seen again for 10 s, the window drops to 4
      packets for ``max(200 ms, min_rtt)`` so the queue drains and the minimum is measured
      afresh (our own queue never inflates it).
    - Loss is not a congestion signal unless heavy: more than ``HEAVY_LOSS`` of a round trip's
      packets cuts the window by 30 % and restarts the rate estimate. Persistent congestion
      (RFC 9002) restarts from 4 packets in startup.
    """

    STARTUP_GAIN = 2.89
    CWND_GAIN = 2.0
    STARTUP_GROWTH = 1.25
    STARTUP_ROUNDS = 3
    BW_WINDOW_ROUNDS = 10
    MIN_RTT_WINDOW_S = 10.0
    PROBE_RTT_S = 0.2
    HEAVY_LOSS = 0.2
    #: never aim below this many packets in flight outside probe RTT: on LANs and loopback
    #: the minimum RTT is far below the RTT under load (scheduling, batched acks), and a
    #: window sized from it would starve itself
    MIN_WINDOW_PACKETS = 16
    PROBE_RTT_PACKETS = 4

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self.mss = max_datagram_size
        self.mode = "startup"
        self.delivered = 0
        self.delivered_time = 0.0
        self.first_sent_time = 0.0
        self._sent: dict[int, tuple[int, float, float]] = {}
        self.round = 0
        self._next_round_delivered = 0
        self._bw: deque[tuple[int, float]] = deque()  # (round, bytes/s), decreasing rates
        self.min_rtt: float | None = None
        self._min_rtt_at = 0.0
        self._full_bw = 0.0
        self._full_bw_rounds = 0
        self._round_lost = 0
        self._round_acked = 0
        self._probe_done_at: float | None = None
        self._probe_min = float("inf")
        self._probe_from = "startup"

    @property
    def bandwidth(self) -> float:
        return self._bw[0][1] if self._bw else 0.0

    def _packets(self, n: int) -> int:
        return n * self.mss

    # -- events from aioquic's recovery ------------------------------------------------------

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        now = packet.sent_time or 0.0
        if self.bytes_in_flight == 0:
            self.first_sent_time = self.delivered_time = now
        self.bytes_in_flight += packet.sent_bytes
        if len(self._sent) > 200_000:  # never: every in-flight packet is acked or lost
            self._sent.clear()
        self._sent[id(packet)] = (self.delivered, self.delivered_time, self.first_sent_time)

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self.bytes_in_flight -= packet.sent_bytes
        self.delivered += packet.sent_bytes
        self.delivered_time = now
        self._round_acked += packet.sent_bytes
        state = self._sent.pop(id(packet), None)
        if state is not None:
            delivered_then, delivered_time_then, first_sent_then = state
            sent = packet.sent_time or now
            self.first_sent_time = sent
            if delivered_then >= self._next_round_delivered:
                self._next_round_delivered = self.delivered
                self._end_round()
            interval = max(sent - first_sent_then, now - delivered_time_then)
            if interval > 0:
                self._add_bw_sample((self.delivered - delivered_then) / interval)
        self._update(now, packet.sent_bytes)

    def _forget(self, packets: Iterable[QuicSentPacket]) -> int:
        gone = 0
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes
            self._sent.pop(id(packet), None)
            gone += packet.sent_bytes
        return gone

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        self._forget(packets)

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        self._round_lost += self._forget(packets)

    def on_persistent_congestion(self) -> None:
        self.congestion_window = self._packets(self.PROBE_RTT_PACKETS)
        self._bw.clear()
        self.mode = "startup"
        self._full_bw = 0.0
        self._full_bw_rounds = 0

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        if self.min_rtt is None or rtt <= self.min_rtt:
            self.min_rtt = rtt
            self._min_rtt_at = now
        self._probe_min = min(self._probe_min, rtt)

    # -- the model ---------------------------------------------------------------------------

    def _add_bw_sample(self, rate: float) -> None:
        while self._bw and self._bw[-1][1] <= rate:
            self._bw.pop()
        self._bw.append((self.round, rate))
        while self._bw[0][0] < self.round - self.BW_WINDOW_ROUNDS:
            self._bw.popleft()

    def _end_round(self) -> None:
        self.round += 1
        total = self._round_lost + self._round_acked
        heavy = total > 0 and self._round_lost > self.HEAVY_LOSS * total
        self._round_lost = self._round_acked = 0
        if heavy:
            self.congestion_window = max(int(self.congestion_window * 0.7),
                                         self._packets(self.PROBE_RTT_PACKETS))
            self._bw.clear()
            if self.mode == "startup":
                self._leave_startup()
            return
        if self.mode == "startup":
            if self.bandwidth >= self._full_bw * self.STARTUP_GROWTH:
                self._full_bw = self.bandwidth
                self._full_bw_rounds = 0
            else:
                self._full_bw_rounds += 1
                if self._full_bw_rounds >= self.STARTUP_ROUNDS:
                    self._leave_startup()

    def _leave_startup(self) -> None:
        self.mode = "steady"
        self.ssthresh = self.congestion_window

    def _update(self, now: float, acked: int) -> None:
        """Set the window after an acknowledgement."""
        if self.mode != "probe_rtt" and self.min_rtt is not None \
                and now - self._min_rtt_at > self.MIN_RTT_WINDOW_S:
            self._probe_from, self.mode = self.mode, "probe_rtt"
            self._probe_done_at = None
            self._probe_min = float("inf")
        if self.mode == "probe_rtt":
            self.congestion_window = self._packets(self.PROBE_RTT_PACKETS)
            if self._probe_done_at is None:
                if self.bytes_in_flight <= self.congestion_window:
                    self._probe_done_at = now + max(self.PROBE_RTT_S, self.min_rtt or 0.0)
            elif now >= self._probe_done_at:
                if self._probe_min < float("inf"):
                    self.min_rtt = self._probe_min
                self._min_rtt_at = now
                self.mode = self._probe_from
            else:
                return
            if self.mode == "probe_rtt":
                return
        if self.min_rtt is None or not self._bw:
            if self.mode == "startup":
                self.congestion_window += acked  # no model yet: plain slow start
            return
        bdp = self.bandwidth * self.min_rtt
        floor = self._packets(self.MIN_WINDOW_PACKETS)
        if self.mode == "startup":
            self.congestion_window = max(self.congestion_window,
                                         int(self.STARTUP_GAIN * bdp), floor)
        else:
            self.congestion_window = max(int(self.CWND_GAIN * bdp), floor)

    def get_log_data(self) -> dict[str, Any]:
        data = super().get_log_data()
        data.update(mode=self.mode, bandwidth=int(self.bandwidth), min_rtt=self.min_rtt)
        return data


register_congestion_control("overlay-bbr", MediaCongestionControl)


class QuicPathError(ConnectionError):
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
                  congestion_control: str = CONGESTION_CONTROL) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        idle_timeout=idle_timeout,
        connection_id_length=QUIC_CID_BYTES,
        max_datagram_size=MAX_DATAGRAM_SIZE,
        max_data=RECEIVE_WINDOW,
        max_stream_data=RECEIVE_WINDOW,
        congestion_control_algorithm=congestion_control,
        verify_mode=ssl.CERT_NONE,
        server_name="overlay-media",
    )
    if not is_client:
        config.certificate, config.private_key = self_signed_certificate()
    return config


class QuicStreamCore:
    """Sans-IO: a ``QuicConnection`` carrying one bidirectional stream (stream 0).

    Feed it with :meth:`receive` and :meth:`handle_timer`; collect :meth:`datagrams`; query
    :meth:`timer`. Received stream bytes accumulate in ``received``; ``fin_received``,
    ``handshake_done``, ``stream_open`` and ``error`` describe the state. ``new_cids`` and
    ``retired_cids`` list connection ids the socket must start or stop routing here.
    """

    def __init__(self, conn: QuicConnection, is_client: bool) -> None:
        self.conn = conn
        self.is_client = is_client
        self.received = bytearray()
        self.fin_received = False
        self.handshake_done = False
        #: the client opened the stream (and, server side, its preamble checked out)
        self.stream_open = is_client
        self.error: str | None = None
        self.terminated = False
        self.new_cids: list[bytes] = []
        self.retired_cids: list[bytes] = []
        self._preamble = bytearray()
        self._fin_sent = False
        self._ping_uid = 0

    # -- driving ---------------------------------------------------------------------------

    def connect(self, addr: Address, now: float) -> None:
        """Client: start the handshake and open the stream with the preamble."""
        self.conn.connect(addr, now=now)
        self.conn.send_stream_data(STREAM_ID, PREAMBLE)

    def receive(self, data: bytes, addr: Address, now: float) -> None:
        self.conn.receive_datagram(data, addr, now=now)
        self._process()

    def handle_timer(self, now: float) -> None:
        self.conn.handle_timer(now=now)
        self._process()

    def datagrams(self, now: float) -> list[tuple[bytes, Address]]:
        return [(d, (str(a[0]), int(a[1]))) for d, a in self.conn.datagrams_to_send(now=now)]

    def timer(self) -> float | None:
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
        self.conn.send_stream_data(STREAM_ID, data)

    def finish(self) -> None:
        """Send FIN (once)."""
        if self._fin_sent or self.terminated or not self.stream_open:
            return
        self._fin_sent = True
        self.conn.send_stream_data(STREAM_ID, b"", end_stream=True)

    def unacknowledged(self) -> int:
        """Bytes written but not yet acknowledged by the peer (including unsent ones)."""
        stream = self.conn._streams.get(STREAM_ID)
        if stream is None:
            return 0
        sender = stream.sender
        return int(sender._buffer_stop - sender._buffer_start)

    def all_acknowledged(self) -> bool:
        """Everything, FIN included, reached the peer."""
        stream = self.conn._streams.get(STREAM_ID)
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
            if isinstance(event, events.HandshakeCompleted):
                if event.alpn_protocol != ALPN:
                    self.close(f"ALPN {event.alpn_protocol!r}")
                else:
                    self.handshake_done = True
            elif isinstance(event, events.StreamDataReceived):
                if event.stream_id == STREAM_ID:
                    self._stream_data(event.data, event.end_stream)
            elif isinstance(event, events.StreamReset):
                if event.stream_id == STREAM_ID:
                    self.error = self.error or f"stream reset by the peer ({event.error_code})"
                    self.close(self.error)
            elif isinstance(event, events.ConnectionTerminated):
                self.terminated = True
                if event.error_code != QuicErrorCode.NO_ERROR or not self.fin_received:
                    self.error = self.error or (
                        f"connection closed (code {event.error_code}"
                        + (f": {event.reason_phrase}" if event.reason_phrase else "") + ")")
            elif isinstance(event, events.ConnectionIdIssued):
                self.new_cids.append(event.connection_id)
            elif isinstance(event, events.ConnectionIdRetired):
                self.retired_cids.append(event.connection_id)

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


class QuicByteStream:
    """The asyncio adapter: a :class:`ByteStream` over :class:`QuicStreamCore` on a
    :class:`MediaSocket`. Made by :func:`quic_connect`."""

    path = PATH_NAME

    def __init__(self, media: MediaSocket, core: QuicStreamCore, peer: Address) -> None:
        self.media = media
        self.core = core
        self.peer = peer
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._changed = asyncio.Event()
        self._closed = False
        self._keepalive = self._loop.call_later(KEEPALIVE_S, self._ping)
        media.add_quic_route(self, cid=core.conn.host_cid, addr=peer)

    # -- MediaSocket side --------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.core.receive(data, addr, self._loop.time())
        self._after()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.core.handle_timer(self._loop.time())
        self._after()

    def _ping(self) -> None:
        if self.core.terminated:
            return
        self.core.ping()
        self._after()
        self._keepalive = self._loop.call_later(KEEPALIVE_S, self._ping)

    def _after(self) -> None:
        """Send what is due, route new connection ids, re-arm the timer, wake waiters."""
        for data, addr in self.core.datagrams(self._loop.time()):
            self.media.sendto(data, addr)
        for cid in self.core.new_cids:
            self.media.add_quic_route(self, cid=cid)
        for cid in self.core.retired_cids:
            self.media.remove_quic_cid(cid)
        self.core.new_cids.clear()
        self.core.retired_cids.clear()
        at = self.core.timer()
        if at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._timer_at = at
            if at is not None:
                self._timer = self._loop.call_at(at, self._on_timer)
        if self.core.terminated:
            self._teardown()
        self._changed.set()

    def _teardown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._keepalive.cancel()
        self.media.remove_quic_routes(self)

    async def _wait(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until ``predicate()``; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    # -- ByteStream --------------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        if not self.core.stream_open:
            await self._wait(lambda: self.core.stream_open or self.core.terminated)
        self.core.write(data)
        self._after()
        await self._wait(lambda: self.core.terminated
                         or self.core.unacknowledged() <= SEND_HIGH_WATER)
        if self.core.terminated and self.core.error:
            raise QuicPathError(self.core.error)

    async def recv(self, max_bytes: int = 65536) -> bytes:
        await self._wait(lambda: bool(self.core.received) or self.core.fin_received
                         or self.core.terminated)
        if self.core.received:
            out = bytes(self.core.received[:max_bytes])
            del self.core.received[:max_bytes]
            return out
        if self.core.fin_received:
            return b""
        raise QuicPathError(self.core.error or "the connection closed without FIN")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.core.terminated:
            self.core.finish()
            self._after()
            # wait for the peer to acknowledge everything, as long as it makes progress
            left = [self.core.unacknowledged()]

            def progressed() -> bool:
                return (self.core.terminated or self.core.all_acknowledged()
                        or self.core.unacknowledged() < left[0])

            while not (self.core.terminated or self.core.all_acknowledged()):
                left[0] = self.core.unacknowledged()
                if not await self._wait(progressed, CLOSE_STALL_S):
                    break
            self.core.close()
            self._after()
            # stay routed while the CONNECTION_CLOSE goes out and the peer may echo it
            await self._wait(lambda: self.core.terminated, 0.5)
        self._teardown()

    def abort(self, reason: str) -> None:
        """Close at once with an application error (no waiting for acknowledgements)."""
        self._closed = True
        if not self.core.terminated:
            self.core.close(reason)
            self._after()
        self._teardown()
        self.core.terminated = True
        self._changed.set()


async def quic_connect(
    media: MediaSocket, peer: Address, *, initiator: bool, timeout: float = CONNECT_TIMEOUT_S,
    session_id: bytes | None = None, idle_timeout: float = IDLE_TIMEOUT_S,
    congestion_control: str = CONGESTION_CONTROL,
) -> QuicByteStream:
    """QUIC to ``peer`` over ``media``: as client when ``initiator``, else as server.

    The server takes the first QUIC Initial from ``peer`` or, when ``session_id`` names a
    punching session on ``media``, from any address that session verified (the peer may have
    reached us from another of its addresses). Returns once the handshake completed and the
    stream is open, or raises :class:`QuicPathError` within ``timeout``."""
    loop = asyncio.get_running_loop()
    if initiator:
        config = configuration(True, idle_timeout, congestion_control)
        core = QuicStreamCore(QuicConnection(configuration=config), is_client=True)
        stream = QuicByteStream(media, core, peer)
        try:
            core.connect(peer, loop.time())
            stream._after()
            ok = await stream._wait(lambda: core.handshake_done or core.terminated, timeout)
        except BaseException:  # cancelled (another path won): leave nothing behind
            stream.abort("cancelled")
            raise
        if not ok or not core.handshake_done:
            stream.abort("handshake timeout")
            raise QuicPathError(core.error or f"no QUIC handshake with {peer[0]}:{peer[1]} "
                                f"within {timeout}s")
        return stream

    accepted: asyncio.Future[QuicByteStream] = loop.create_future()

    def accepts(addr: Address) -> bool:
        if addr == peer:
            return True
        puncher = media.puncher(session_id) if session_id is not None else None
        return puncher is not None and addr in puncher.verified

    def on_initial(data: bytes, addr: Address, header: QuicHeader) -> QuicByteStream | None:
        if accepted.done() or len(data) < 1200:
            return None
        conn = QuicConnection(configuration=configuration(False, idle_timeout,
                                                          congestion_control),
                              original_destination_connection_id=header.destination_cid)
        server = QuicByteStream(media, QuicStreamCore(conn, is_client=False), addr)
        media.add_quic_route(server, cid=header.destination_cid)
        accepted.set_result(server)
        server.datagram_received(data, addr)
        return server

    cancel = media.accept_quic(accepts, on_initial)
    server: QuicByteStream | None = None
    try:
        async with asyncio.timeout(timeout):
            server = await accepted
            srv = server
            await srv._wait(lambda: (srv.core.handshake_done and srv.core.stream_open)
                            or srv.core.terminated)
    except TimeoutError:
        pass
    except BaseException:  # cancelled (another path won): leave nothing behind
        if accepted.done() and not accepted.cancelled():
            accepted.result().abort("cancelled")
        raise
    finally:
        cancel()
    if server is None or not server.core.handshake_done or not server.core.stream_open:
        error = server.core.error if server is not None else None
        if server is not None:
            server.abort("handshake timeout")
        raise QuicPathError(error or f"no QUIC connection from {peer[0]}:{peer[1]} "
                            f"within {timeout}s")
    return server


async def udp_path(
    media: MediaSocket, session_id: bytes, shared_secret: bytes, transcript_hash: bytes,
    initiator: bool, local_candidates: list[Address], remote_candidates: list[Address],
    punch_timeout: float = 5.0, connect_timeout: float = CONNECT_TIMEOUT_S,
) -> QuicByteStream:
    """Punch, then QUIC on the punched address: the raw ``"udp-punch"`` ByteStream for one
    session (still to be passed through ``secure_stream.secure``)."""
    peer = await punch(media, session_id, punch_key(shared_secret, transcript_hash), initiator,
                       local_candidates, remote_candidates, punch_timeout)
    return await quic_connect(media, peer, initiator=initiator, timeout=connect_timeout,
                              session_id=session_id)
