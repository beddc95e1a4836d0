"""When a file transfer moves from the relay it started on to a direct path that completed
later (relay first, upgrade later; the same from a punched UDP path to direct TCP, UDP
first, upgrade to TCP: "the relay" below is then that UDP path), sans-IO: the state of the
relay leg and of the upgrade in, the step out. :mod:`overlay.media.path_move` runs it.

The sender moves while it is still sending data; once every byte went out (its ``END`` may be
on the way) it waits for the receiver's ``ACK`` on the relay instead, and moves only if the
relay then ends (the receiver moved first). The receiver reads the relay until ``END``; when
the upgrade arrives first it stops at a frame boundary, keeping what it wrote, and moves. So
both end on the same path: the receiver acknowledges on the relay only after ``END``, which
the sender sends only when it did not move; and a move resumes at the offset the receiver's
``READY`` names (no byte lost, none written twice; the sha256 check proves it).
"""

from __future__ import annotations

from typing import Literal

from overlay.media.techniques import is_relay

#: the relay leg: still running, ended with the transfer done (or refused: not a path's
#: fault), or ended because its path was lost (or left)
Leg = Literal["running", "done", "lost"]
#: the upgrade: a direct path completed ("ready"), may still complete ("pending"), or none
#: did within the window ("none")
Upgrade = Literal["ready", "pending", "none"]
#: wait for the next change; move to the direct path; finish with the relay leg's outcome
Step = Literal["wait", "move", "finish"]


#: a transfer on a punched UDP path moves to direct TCP only while at least this much is left
#: to send: TCP starts its congestion window afresh and the move costs a round trip, which pays
#: off only on what is left (lab, 400 ms RTT, cone to public: 2 MiB took 3.67 s on UDP, 4.38 s
#: moving; 8 MiB 8.31 s against 5.37 s; 32 MiB 27.8 s against 8.6 s)
UDP_TO_TCP_MIN_LEFT = 4 << 20


def worth_moving(current: str, left: int) -> bool:
    """Whether a transfer on the path of attempt ``current`` with ``left`` bytes still to send
    moves to a later path: off a relay always (a relay is the network's scarce resource), off
    a punched UDP path only with :data:`UDP_TO_TCP_MIN_LEFT` to go."""
    return is_relay(current) or left >= UDP_TO_TCP_MIN_LEFT


#: a lost relay leg: move to a ready direct path, wait for a pending one, else fail as before
_AFTER_LOSS: dict[Upgrade, Step] = {"ready": "move", "pending": "wait", "none": "finish"}


def sender_step(leg: Leg, upgrade: Upgrade, all_data_sent: bool) -> Step:
    if leg == "done":
        return "finish"
    if leg == "lost":
        return _AFTER_LOSS[upgrade]
    return "move" if upgrade == "ready" and not all_data_sent else "wait"


def receiver_step(leg: Leg, upgrade: Upgrade) -> Step:
    if leg == "done":
        return "finish"
    if leg == "lost":
        return _AFTER_LOSS[upgrade]
    return "wait"  # the relay read stops by itself at the next frame once the upgrade is ready
