"""Feasibility check for issue 13's next step (not used by the daemon): QUIC 0-RTT under a
pre-shared key both ends derive from a media session's secret, with aioquic as pinned.

Why: on a punched pair, the caller's first byte reaches the callee a round trip after the
QUIC handshake's first flight (Initial -> server flight with its 0.5-RTT salt and CONFIRM ->
the caller's SELECT and data). If the caller's SELECT and first bytes ride in its first flight
as 0-RTT data, setup falls from about lookup + 3.6 round trips to about lookup + 2.6 with one
supernode (tools/bench/README.md, *Where the round trips go*).

How: both ends build the same ``SessionTicket`` from the session secret (no ticket was ever
issued: the invite and answer already agreed a secret). The client gets it as
``configuration.session_ticket``; the server as ``session_ticket_fetcher`` (an argument of
``QuicConnection``, not a configuration field). aioquic only sends 0-RTT stream data when the
ticket carries the server's transport parameters (``other_extensions``), so they are
synthesised from the configuration both ends share. The ticket's cipher suite must be the one
the server negotiates (AES-256-GCM with aioquic's defaults), or it ignores the ticket. The PSK
binder proves the Initial's sender knows the secret. With another secret the ticket id differs,
the server finds no ticket and falls back to a full handshake with no early data (with the
right id and a wrong PSK it aborts: "PSK validation failed"), so a server that relies on the
PSK must close a connection whose handshake did not resume (``tls.session_resumed``) before
it writes anything.

``python -m tools.experiments.quic_psk_zero_rtt`` prints one JSON line: whether the server
read the client's stream bytes from the client's first flight (before it sent anything), that
it resumed, and that a wrong secret got no handshake.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys

from aioquic import tls
from aioquic._buffer import Buffer
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicTransportParameters, push_quic_transport_parameters

from overlay.media.quic.core import RECEIVE_WINDOW, configuration

#: aioquic sends 0-RTT data only under a ticket whose max_early_data_size is this value
MAX_EARLY_DATA = 0xFFFFFFFF
CLIENT = ("198.18.0.1", 4433)
SERVER = ("198.18.0.2", 4433)


def psk_ticket(secret: bytes) -> tls.SessionTicket:
    """The ticket both ends derive from ``secret`` (identity and PSK are one-way functions of
    it, under different personalisations)."""
    now = datetime.datetime.now(datetime.UTC)
    params = QuicTransportParameters(
        initial_max_data=RECEIVE_WINDOW, initial_max_stream_data_bidi_local=RECEIVE_WINDOW,
        initial_max_stream_data_bidi_remote=RECEIVE_WINDOW,
        initial_max_stream_data_uni=RECEIVE_WINDOW, initial_max_streams_bidi=128,
        initial_max_streams_uni=128, active_connection_id_limit=8, max_idle_timeout=30_000)
    buf = Buffer(capacity=512)
    push_quic_transport_parameters(buf, params)
    return tls.SessionTicket(
        age_add=0, cipher_suite=tls.CipherSuite.AES_256_GCM_SHA384,
        not_valid_after=now + datetime.timedelta(minutes=5),
        not_valid_before=now - datetime.timedelta(minutes=5),
        resumption_secret=hashlib.blake2b(secret, digest_size=48,
                                          person=b"ovl-psk-secret").digest(),
        server_name="overlay-media",
        ticket=hashlib.blake2b(secret, digest_size=16, person=b"ovl-psk-id").digest(),
        max_early_data_size=MAX_EARLY_DATA,
        other_extensions=[(tls.ExtensionType.QUIC_TRANSPORT_PARAMETERS, buf.data)])


def run(client_secret: bytes, server_secret: bytes) -> dict[str, object]:
    now = 0.0
    cconf = configuration(True)
    cconf.session_ticket = psk_ticket(client_secret)
    client = QuicConnection(configuration=cconf)
    client.connect(SERVER, now=now)
    client.send_stream_data(0, b"SELECT+first bytes", end_stream=False)
    first_flight = [d for d, _ in client.datagrams_to_send(now=now)]
    server_ticket = psk_ticket(server_secret)
    server = QuicConnection(
        configuration=configuration(False),
        original_destination_connection_id=client.original_destination_connection_id,
        session_ticket_fetcher=lambda ident: server_ticket if ident == server_ticket.ticket
        else None)
    early = b""
    for d in first_flight:
        server.receive_datagram(d, CLIENT, now=now)
    terminated = None
    while (ev := server.next_event()) is not None:
        if isinstance(ev, events.StreamDataReceived):
            early += ev.data
        if isinstance(ev, events.ConnectionTerminated):
            terminated = ev.reason_phrase
    return {"first_flight_datagrams": len(first_flight), "early_bytes_at_server": early.decode(),
            "resumed": server.tls.session_resumed, "terminated": terminated}


def main() -> int:
    secret = os.urandom(32)
    same = run(secret, secret)
    other = run(secret, os.urandom(32))
    ok = (same["early_bytes_at_server"] == "SELECT+first bytes" and same["resumed"] is True
          and other["early_bytes_at_server"] == "" and other["resumed"] is False)
    print(json.dumps({"same_secret": same, "other_secret": other, "feasible": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
