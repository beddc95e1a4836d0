"""Ed25519 identities: key files, public ids and Kademlia node ids derived from keys.

A node's position in the keyspace is the first 160 bits of SHA-256 of its public key,
so nobody chooses where they sit.
"""

from __future__ import annotations

import hashlib
import stat
from dataclasses import dataclass
from pathlib import Path

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
    def load_or_create(cls, path: Path) -> Identity:
        """The one key loader: :meth:`load` the key file, or create it (logged as
        ``key_created``) when there is none."""
        if path.exists():
            return cls.load(path)
        identity = cls.generate()
        identity.save(path)
        log.info("key_created", path=str(path), public_id=identity.public_id)
        return identity
