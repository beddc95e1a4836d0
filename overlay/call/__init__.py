"""Calls: real-time media between two clients (issue 15).

Sans-IO cores: :mod:`~overlay.call.frames` (the end-to-end encrypted media datagram and its
replay window), :mod:`~overlay.call.jitter` (adaptive jitter buffer, RFC 3550 jitter),
:mod:`~overlay.call.quality` (E-model MOS, ITU-T G.107) and :mod:`~overlay.call.session`
(one call: frames out every 20 ms, frames in, one stats line a second).
"""
