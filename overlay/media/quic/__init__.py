"""QUIC on a punched UDP path: one bidirectional stream as a ByteStream (``path = "udp-punch"``).

After :func:`overlay.media.punch_io.punch` both clients know each other's address as seen
through their NATs. The initiator (the invite's sender) is the QUIC client, the other side the
QUIC server, both on their :class:`~overlay.media.media_socket.MediaSocket`, so QUIC packets
take the very holes the probes opened. aioquic's sans-IO ``QuicConnection`` does the protocol.
One module per job:

- :mod:`.congestion`: :class:`MediaCongestionControl` (``"overlay-bbr"``);
- :mod:`.core`: :class:`QuicStreamCore`, sans-IO (explicit ``now``), the one-stream logic;
- :mod:`.ticket`: the 0-RTT path's pre-shared key, from the session secret;
- :mod:`.stream`: :class:`QuicByteStream`, the thin asyncio adapter on a MediaSocket;
- :mod:`.connect`: :func:`quic_connect` (client or server side) and :func:`udp_path`
  (punch, then QUIC).

Security: QUIC's TLS here is transport encryption only (under ``overlay-media/1``). The
server presents an ephemeral self-signed certificate made in memory for this connection and
the client does not verify it (``verify_mode=CERT_NONE``): nobody's identity is, or could
be, bound to it. Authentication and end-to-end encryption come from
:func:`overlay.media.secure_stream.secure` run on top of the returned stream with the
invite/answer keys; a man in the middle of the QUIC layer ends up holding a stream on which
that confirmation never completes.

The stream: the server opens stream 1 (its first bidirectional stream) with an 8-byte preamble
(``PREAMBLE``), which the client checks and strips, the moment it has read the client's Initial:
what the server writes next (the callee's path salt and ``CONFIRM``) goes as 0.5-RTT data with
its handshake flight, and the client returns from :func:`~.connect.quic_connect` holding it,
one round trip after its Initial. The server's :func:`~.connect.quic_connect` returns then too,
before the handshake completes; its stream aborts (``QuicPathError``) if the handshake does not
complete within the connect timeout (the client of an early-kept Initial may be gone). The
client writes nothing before the server's stream is open.

0-RTT (ALPN ``overlay-media/2``, a file's caller whose callee lists the ``media-0rtt``
capability): the client resumes the ticket :func:`.ticket.session_ticket` derives from the
session secret, opens stream 0 itself (preamble first) and returns from ``quic_connect`` at
once, so what it writes goes with its first flight; the server reads it before sending
anything. Here the handshake does authenticate: only holders of the session secret resume
the ticket, and both ends close a connection that did not resume (the server at the
ClientHello, before writing; the client at the end of its handshake).

Either way ``send`` applies back-pressure while more than ``SEND_HIGH_WATER`` bytes are unsent or
unacknowledged; ``recv`` returns ``b""`` after the peer's FIN; ``close`` sends FIN, waits until
everything sent was acknowledged (giving up after ``CLOSE_STALL_S`` without progress), then closes
the connection with NO_ERROR. A PING every ``KEEPALIVE_S`` keeps NAT mappings and the idle timer
alive.

Congestion control: :class:`MediaCongestionControl` (``"overlay-bbr"``, BBR-like), because a
loss-based controller collapses on long paths with random loss; ``congestion_control="cubic"``
(or ``"reno"``) selects aioquic's own. One place reads aioquic's private state:
:meth:`QuicStreamCore.unacknowledged` / ``all_acknowledged`` look at the stream's send buffer
(aioquic offers no back-pressure of its own); pinned by the tests.
"""
