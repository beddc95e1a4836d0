"""The pre-shared key of a 0-RTT media path: one TLS ``SessionTicket`` both ends of a media
session derive from its X25519 secret and transcript hash, so that the caller's first QUIC
flight already carries stream bytes (0-RTT) and the callee can read them.

No ticket is ever issued on the wire: the invite and answer already agreed a secret. The
ticket's identity (sent in clear in the ClientHello) and its resumption secret (the PSK) are
BLAKE2b of the secret over the transcript hash under two personalisations, one-way functions
of it. The PSK binder proves the ClientHello's sender holds the PSK, and the server's Finished
proves the server does: a handshake that resumed under this ticket authenticates both ends
to each other as holders of the session secret. One that did not resume (another ticket, or
none) proves nothing, and both ends close it (:mod:`.core`).

aioquic as pinned sends 0-RTT stream data only under a ticket that carries the server's
transport parameters and a ``max_early_data_size`` of 0xFFFFFFFF, and uses the ticket only
when its cipher suite is the one the server negotiates (AES-256-GCM with its defaults): the
parameters are those every media path's configuration sets (:func:`.core.configuration`)."""

from __future__ import annotations

import datetime
import hashlib

from aioquic import tls
from aioquic._buffer import Buffer
from aioquic.quic.packet import QuicTransportParameters, push_quic_transport_parameters

from overlay.media.quic.core import (
    IDLE_TIMEOUT_S,
    MAX_DATAGRAM_FRAME_BYTES,
    RECEIVE_WINDOW,
    SERVER_NAME,
)

#: the only value with which aioquic sends 0-RTT stream data
MAX_EARLY_DATA = 0xFFFFFFFF
PERSON_TICKET_ID = b"ovl-0rtt-ticket1"
PERSON_PSK = b"ovl-0rtt-psk-v1\x00"
TICKET_ID_BYTES = 16
#: the resumption secret's size under the ticket's cipher suite (SHA-384)
PSK_BYTES = 48
#: how long the ticket is valid either side of now (both ends derive it within a race)
VALIDITY = datetime.timedelta(minutes=10)


def _transport_parameters() -> bytes:
    """What the server's configuration announces and a 0-RTT client may rely on."""
    params = QuicTransportParameters(
        initial_max_data=RECEIVE_WINDOW, initial_max_stream_data_bidi_local=RECEIVE_WINDOW,
        initial_max_stream_data_bidi_remote=RECEIVE_WINDOW,
        initial_max_stream_data_uni=RECEIVE_WINDOW, initial_max_streams_bidi=128,
        initial_max_streams_uni=128, active_connection_id_limit=8,
        max_idle_timeout=int(IDLE_TIMEOUT_S * 1000),
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_BYTES)
    buf = Buffer(capacity=512)
    push_quic_transport_parameters(buf, params)
    return buf.data


def session_ticket(shared_secret: bytes, transcript_hash: bytes) -> tls.SessionTicket:
    """The ticket of the media session with this secret and transcript (both ends alike)."""
    now = datetime.datetime.now(datetime.UTC)
    return tls.SessionTicket(
        age_add=0, cipher_suite=tls.CipherSuite.AES_256_GCM_SHA384,
        not_valid_after=now + VALIDITY, not_valid_before=now - VALIDITY,
        resumption_secret=hashlib.blake2b(transcript_hash, key=shared_secret,
                                          digest_size=PSK_BYTES, person=PERSON_PSK).digest(),
        server_name=SERVER_NAME,
        ticket=hashlib.blake2b(transcript_hash, key=shared_secret,
                               digest_size=TICKET_ID_BYTES, person=PERSON_TICKET_ID).digest(),
        max_early_data_size=MAX_EARLY_DATA,
        other_extensions=[(tls.ExtensionType.QUIC_TRANSPORT_PARAMETERS,
                           _transport_parameters())])
