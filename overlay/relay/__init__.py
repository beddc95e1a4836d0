"""The relay: token-paired forwarding on a supernode's TCP port.

The protocol is in :mod:`overlay.relay.protocol`.
"""
