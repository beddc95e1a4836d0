"""Setting up a media QUIC path (asyncio): :func:`quic_connect` as client or server on a
:class:`~overlay.media.media_socket.MediaSocket`, and :func:`udp_path` (punch, then QUIC)."""

from __future__ import annotations

import asyncio
import hmac

from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicHeader
from aioquic.tls import SessionTicket

from overlay.core.addresses import Address
from overlay.media.media_socket import MediaSocket
from overlay.media.punch import punch_key
from overlay.media.punch_io import punch
from overlay.media.quic.congestion import CONGESTION_CONTROL
from overlay.media.quic.core import IDLE_TIMEOUT_S, QuicPathError, QuicStreamCore, configuration
from overlay.media.quic.stream import QuicByteStream
from overlay.media.quic.ticket import session_ticket

CONNECT_TIMEOUT_S = 5.0


async def quic_connect(
    media: MediaSocket, peer: Address, *, initiator: bool, timeout: float = CONNECT_TIMEOUT_S,
    session_id: bytes | None = None, idle_timeout: float = IDLE_TIMEOUT_S,
    congestion_control: str = CONGESTION_CONTROL, session_ticket: SessionTicket | None = None,
    zero_rtt: bool = False,
) -> QuicByteStream:
    """QUIC to ``peer`` over ``media``: as client when ``initiator``, else as server.

    ``session_ticket`` (:func:`.ticket.session_ticket`): a server takes a 0-RTT client that
    resumes it (:data:`~.core.ALPN_ZERO_RTT`) as well as one that does not ask to; a client
    given it and ``zero_rtt`` speaks 0-RTT, and returns at once: what it writes goes with its
    first flight, and the stream aborts unless the handshake completes (resuming the ticket)
    within ``timeout``.

    The server takes the first QUIC Initial from ``peer`` or, when ``session_id`` names a
    punching session on ``media``, from any address that session verified (the peer may have
    reached us from another of its addresses). The client returns once the handshake
    completed and the server's stream is open; the server once it has read the ClientHello
    and opened the stream, so that what it sends first goes with its handshake flight
    (0.5-RTT: it may not know yet that the client completes the handshake; the
    end-to-end confirmation on top tells). Raises :class:`QuicPathError` within
    ``timeout``."""
    loop = asyncio.get_running_loop()
    if initiator:
        config = configuration(True, idle_timeout, congestion_control,
                               session_ticket if zero_rtt else None)
        core = QuicStreamCore(QuicConnection(configuration=config), is_client=True)
        stream = QuicByteStream(media, core, peer)
        try:
            core.connect(peer, loop.time())
            stream._after()
            if core.zero_rtt:
                stream.require_handshake(timeout)
                return stream
            ok = await stream._wait(lambda: (core.handshake_done and core.stream_open)
                                    or core.terminated, timeout)
        except BaseException:  # cancelled (another path won): leave nothing behind
            stream.abort("cancelled")
            raise
        if not ok or not core.handshake_done or not core.stream_open:
            stream.abort("handshake timeout")
            raise QuicPathError(core.error or f"no QUIC handshake with {peer[0]}:{peer[1]} "
                                f"within {timeout}s")
        return stream

    accepted: asyncio.Future[QuicByteStream] = loop.create_future()

    def fetch_ticket(identity: bytes) -> SessionTicket | None:
        if session_ticket is not None and hmac.compare_digest(identity, session_ticket.ticket):
            return session_ticket
        return None

    def accepts(addr: Address) -> bool:
        if addr == peer:
            return True
        puncher = media.puncher(session_id) if session_id is not None else None
        return puncher is not None and addr in puncher.verified

    def on_initial(data: bytes, addr: Address, header: QuicHeader) -> QuicByteStream | None:
        if accepted.done() or len(data) < 1200:
            return None
        foreign: list[bytes] = []  # a ticket identity the ClientHello named, not ours

        def fetch(identity: bytes) -> SessionTicket | None:
            ticket = fetch_ticket(identity)
            if ticket is None:
                foreign.append(identity)
            return ticket

        conn = QuicConnection(configuration=configuration(False, idle_timeout,
                                                          congestion_control),
                              original_destination_connection_id=header.destination_cid,
                              session_ticket_fetcher=fetch)
        core = QuicStreamCore(conn, is_client=False)
        core.receive_datagram(data, addr, loop.time())  # sans-IO: nothing is sent yet
        if foreign:
            # another session's 0-RTT ClientHello from the same peer (a retransmission of a
            # handshake that failed): not ours to answer; keep waiting for our own
            return None
        server = QuicByteStream(media, core, addr)
        media.add_quic_route(server, cid=header.destination_cid)
        accepted.set_result(server)
        server.flush()
        return server

    deadline = loop.time() + timeout
    cancel = media.accept_quic(accepts, on_initial)
    server: QuicByteStream | None = None
    try:
        async with asyncio.timeout_at(deadline):
            server = await accepted
            srv = server
            await srv._wait(lambda: srv.core.stream_open or srv.core.terminated)
    except TimeoutError:
        pass
    except BaseException:  # cancelled (another path won): leave nothing behind
        if accepted.done() and not accepted.cancelled():
            accepted.result().abort("cancelled")
        raise
    finally:
        cancel()
    if server is None or server.core.terminated or not server.core.stream_open:
        error = server.core.error if server is not None else None
        if server is not None:
            server.abort("handshake timeout")
        raise QuicPathError(error or f"no QUIC connection from {peer[0]}:{peer[1]} "
                            f"within {timeout}s")
    server.require_handshake(max(0.0, deadline - loop.time()))
    return server


async def udp_path(
    media: MediaSocket, session_id: bytes, shared_secret: bytes, transcript_hash: bytes,
    initiator: bool, local_candidates: list[Address], remote_candidates: list[Address],
    punch_timeout: float = 5.0, connect_timeout: float = CONNECT_TIMEOUT_S,
    zero_rtt: bool = False,
) -> QuicByteStream:
    """Punch, then QUIC on the punched address: the raw ``"udp-punch"`` ByteStream for one
    session (still to be passed through ``secure_stream.secure``). The server takes a 0-RTT
    client under the session's ticket; the client is one with ``zero_rtt``."""
    peer = await punch(media, session_id, punch_key(shared_secret, transcript_hash), initiator,
                       local_candidates, remote_candidates, punch_timeout)
    return await quic_connect(media, peer, initiator=initiator, timeout=connect_timeout,
                              session_id=session_id,
                              session_ticket=session_ticket(shared_secret, transcript_hash),
                              zero_rtt=zero_rtt)
