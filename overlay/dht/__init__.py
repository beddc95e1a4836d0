"""The overlay's DHT: signed records in a Kademlia network built on the ``kademlia`` package.

Supernode and client code use only :class:`DHTNode` (start, bootstrap, put, get, closest,
call); nothing outside this package imports ``kademlia``.
"""

from overlay.dht.config import DHTConfig, DHTStats
from overlay.dht.directory import DirectoryLimits
from overlay.dht.errors import DHTError
from overlay.dht.node import Contact, DHTNode, PutFailed
from overlay.dht.server import PutResult
from overlay.dht.storage import StorageLimits

__all__ = [
    "Contact",
    "DHTConfig",
    "DHTError",
    "DHTNode",
    "DHTStats",
    "DirectoryLimits",
    "PutFailed",
    "PutResult",
    "StorageLimits",
]
