"""The relay: token-paired forwarding on a supernode's TCP port, for callers that hold a
voucher signed by both users or a reservation by a client attached to the supernode.

The protocol is in :mod:`overlay.relay.protocol`.
"""
