"""Ed25519 identities: key files, public ids and Kademlia node ids derived from keys.

A node's position in the keyspace is the first 160 bits of SHA-256 of its public key,
so nobody chooses where they sit. A public DHT node's id must also solve a static crypto
puzzle (S/Kademlia, Baumgart & Mies 2007): SHA-256(node id) starts with ``bits`` zero bits.
Only key generation can search for such an id (about 2^bits keys per id), anyone checks it
with one hash of the id alone, and grinding an id next to a chosen key multiplies the cost.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from nacl.bindings import crypto_sign_seed_keypair
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from overlay.core.errors import OverlayError
from overlay.core.files import create_private
from overlay.core.logs import get_logger

log = get_logger(__name__)

KEY_FILE_HEADER = "overlay-ed25519-secret-v1"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
NODE_ID_BYTES = 20


class KeyFileError(OverlayError):
    """A key file is missing, malformed, or readable by others."""


def node_id_for(public_key: bytes) -> bytes:
    """The 160-bit Kademlia id of the holder of ``public_key``."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError("an ed25519 public key is 32 bytes")
    return hashlib.sha256(public_key).digest()[:NODE_ID_BYTES]


def id_puzzle_ok(node_id: bytes, bits: int) -> bool:
    """Whether ``node_id`` solves the static id puzzle: SHA-256(node_id) starts with ``bits``
    zero bits (one hash; ``bits`` 0 accepts every id)."""
    if bits <= 0:
        return True
    digest = int.from_bytes(hashlib.sha256(node_id).digest(), "big")
    return digest >> (256 - bits) == 0


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` over ``message`` verifies under ``public_key``."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Identity:
    """A private ed25519 key and what follows from it."""

    signing_key: SigningKey

    @classmethod
    def generate(cls) -> Identity:
        return cls(SigningKey.generate())

    @classmethod
    def generate_node(cls, puzzle_bits: int) -> Identity:
        """A key whose node id solves the id puzzle: about 2^puzzle_bits key generations
        (the seed-to-key step only, ~60k/s on one core)."""
        while True:
            seed = os.urandom(32)
            public_key, _ = crypto_sign_seed_keypair(seed)
            if id_puzzle_ok(node_id_for(public_key), puzzle_bits):
                return cls.from_seed(seed)

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        return cls(SigningKey(seed))

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def public_id(self) -> str:
        """The printable public id: the hex public key."""
        return self.public_key.hex()

    @property
    def node_id(self) -> bytes:
        return node_id_for(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature

    def save(self, path: Path) -> None:
        """Write the key with mode 0600; refuses to overwrite an existing file."""
        create_private(path, f"{KEY_FILE_HEADER}\n{bytes(self.signing_key).hex()}\n")

    @classmethod
    def load(cls, path: Path) -> Identity:
        """Read a key file; refuse one that group or others can read or write."""
        try:
            st = path.stat()
        except FileNotFoundError:
            raise KeyFileError(f"key file {path} does not exist") from None
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"key file {path} is accessible by others (mode {mode:04o}); "
                f"run: chmod 600 {path}"
            )
        if st.st_size > 4096:
            raise KeyFileError(f"key file {path} is too large to be a key file")
        lines = path.read_text(encoding="ascii", errors="replace").split()
        if len(lines) != 2 or lines[0] != KEY_FILE_HEADER:
            raise KeyFileError(f"key file {path} is not an overlay key file")
        try:
            seed = bytes.fromhex(lines[1])
        except ValueError:
            raise KeyFileError(f"key file {path} has a malformed key") from None
        if len(seed) != 32:
            raise KeyFileError(f"key file {path} has a key of the wrong length")
        return cls.from_seed(seed)

    @classmethod
    def load_or_create(cls, path: Path, puzzle_bits: int = 0) -> Identity:
        """The one key loader: :meth:`load` the key file, or create it (logged as
        ``key_created``) when there is none. ``puzzle_bits``: the key is a public DHT node's,
        whose id must solve the id puzzle; a key file whose id does not is refused."""
        if path.exists():
            identity = cls.load(path)
            if not id_puzzle_ok(identity.node_id, puzzle_bits):
                raise KeyFileError(
                    f"key file {path} holds a key whose node id does not solve the network's "
                    f"id puzzle ({puzzle_bits} bits): a public node needs a new key "
                    f"(move the file away and a valid one is created)")
            return identity
        identity = cls.generate_node(puzzle_bits)
        identity.save(path)
        log.info("key_created", path=str(path), public_id=identity.public_id)
        return identity
