"""The state of one media session and what configures a media service.

:class:`Session` is one invite/answer exchange (its ephemeral keys, the answer awaited);
:class:`MediaConfig` is who the client is and where received files go;
:class:`LostMidTransfer` is a path lost after the transfer began (another session resumes it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from overlay.core.identity import Identity
from overlay.media.errors import PathLost
from overlay.media.inbox_limits import InboxLimits
from overlay.media.secure_stream import InviteSalt
from overlay.media.signalling import MediaKeys, Offer
from overlay.media.stream import RelayRef


class LostMidTransfer(PathLost):
    """The chosen path failed mid-transfer; another session may resume it."""

    def __init__(self, message: str, relay: RelayRef | None,
                 at_relay_limit: bool = False) -> None:
        super().__init__(message)
        self.relay = relay
        #: the relay ended the session at the limit it announced (not a failure of the relay)
        self.at_relay_limit = at_relay_limit


@dataclass(frozen=True)
class MediaConfig:
    """Who this client is, and where received files go."""

    identity: Identity
    user: str
    device: str
    inbox: Path
    #: quota and free space for received files (documented defaults: 1 GiB, 1000 files)
    inbox_limits: InboxLimits = field(default_factory=InboxLimits)
    #: ask the router to map our media ports when behind a NAT (PCP, NAT-PMP)
    port_mapping: bool = True


@dataclass
class Session:
    session_id: bytes
    peer_user: str
    initiator: bool
    keys: MediaKeys = field(default_factory=MediaKeys)
    answer: asyncio.Future[Offer] | None = None
    #: caller: the key the answer must be signed by; set when the callee says "pending"
    peer_key: bytes | None = None
    pending: asyncio.Event = field(default_factory=asyncio.Event)
    #: the address the peer's direct TCP connection to our listener came from, if one came
    accepted_from: str | None = None
    #: the caller's path salt from the signed invite, when it carried one
    #: (:class:`~overlay.media.secure_stream.InviteSalt`: the callee confirms paths at once)
    invite_salt: InviteSalt | None = None
    #: caller: open the punched UDP path with 0-RTT (a file, to a callee whose presence says
    #: it takes them: :data:`~overlay.media.quic.core.ZERO_RTT_CAPABILITY`)
    zero_rtt: bool = False
    #: caller: dial the callee's listener caller first where it is known to be there (the
    #: callee's presence says it takes such dials:
    #: :data:`~overlay.media.tcp_listener.TCP_FIRST_CAPABILITY`)
    tcp_first: bool = False
