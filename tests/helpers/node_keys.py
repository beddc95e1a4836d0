"""Public node keys for tests whose ids solve the production id puzzle
(``DHTConfig.id_puzzle_bits``, 16 bits: ~1 s of key generation each), ground once so that
process tests and mixed networks do not pay that at every daemon start. Test-only secrets.

:func:`production_identity` hands them out in turn (32, then from the first again: a test
network of more than 32 production nodes would repeat one); if the network constant changes
and the seeds no longer solve it, it grinds a key instead (slow but right).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from overlay.core.identity import Identity, id_puzzle_ok
from overlay.dht import DHTConfig

SEEDS = (
    "9ac8a5b2f8ed8a0371a16693d7bda39c0558bc2587e740b0d0ef329658c03612",
    "07e54637ff2502f7c7f60f5e925b21a6666a8e8ddb156b48ed61cafc017ee05e",
    "db0cb4ca74872eff71d0fa69548e68fcb83b1471faee5533132ccce9fad23af5",
    "1d48da9884215c2c0f23446a846a4ec039b77d3a82cffc48918438cd310d5d46",
    "e4c016f208bc1f1b69996f07d9cd3d48fa0b81ea46951389f1046bedb1a2ca0d",
    "625c66fa4a0fe679517847d1a5450434921bbdbf0c870e6098ebf9184f8dc409",
    "a5730d59375906bcff4ad1dd1726b3b709ba1d21ce5a40a0e015e8ef689d73e9",
    "33407810596746cecfae1f4a5164578c32eb09c3e653bedc387e60012b6894e6",
    "665556f4230975d78964d33b6ce499abae9fe14a775cbde6bceb008c82dc6273",
    "8e59e239f929e8b6876b97b9e07a37ef138e4036c04700a8ee5d69b9d2718d16",
    "afd68b212a76e38c0fd8c45df5c96abe22dc6712f14e0ba2262460d4fd412a56",
    "4634e0477a911ecfd50a757f14e3b71dc819bc4044c847a0bdebc4efd1358b74",
    "39a1edc274c8640a59b481799797600a0065929ea89180e31575e1c833436b59",
    "98b71c0bfe2a39427fa0d3f4c21b419451d48504a1bcaa59402a33ffa6befc6b",
    "7d24fb0b2bdcadbb49f6199ef4852fa03f72bd81d3b11d48b0bcc921ce7ae79b",
    "0499e5019a98ad74250309373292b4ce343afe3c5b91caead531af4cd7a72e9b",
    "5c9a93b92c1c829ad9a6996f1dc16a94bb1db81b8d27c77d716a2e7e13f49d70",
    "513f6f875caf696d0c40d171d54677eb56a910475ca1189fc27017b546535b82",
    "7c5de0c6de6e2ecd81e46a6f7746945cee24113e006b47b6d674b2ece87f4bbf",
    "d54f18aa83e5c2d1f8fdf9a0d70ed999cff9b6bafd3e892ace681a0a79c10bf6",
    "7c4d7c14d92f5ecb54ef2e610ebe74fc846c93780de0a020382131bdaabefb7f",
    "befa60f364a20059a9470c43cfa4b0b63e794e2186368c2f04ac361828eab9e7",
    "881021f6e00296418da6eafed12c0ca4b6b37355bd7a5978bc52aaeaef583bf8",
    "6e2589128c11a29a4a59d8522f0182c5b4f2c748041eda678991c911db7657bc",
    "a04dd01d46664369ffd60f15eb20807cd91eceeaff3b7cd160edce8e0a9f1e12",
    "688ae43660b4abf513aa8415782e77a30ea3819532cbb5b01bc72f285beb8367",
    "ddc3b0fbbee3c1d28d6b34975a4da12663395146c4dc92e7257c4af553594771",
    "e67989b50364f4f4e2c8d9bd29cb0a10edcf43246bb52615cae9bc7562046515",
    "165c384273eb4a8a719d64762dbfa5103b30d283c6d546b781200ebda9fb16aa",
    "5564f540925a38d88c449cf61c28af6b47db6f1eb2370bacf22cb7cebb3a27c8",
    "e5c93a0e1bb6952a5742cfafc824b24a04c2512b4e406b9a7c8da5772045ea53",
    "61b4488cea13db6fb4a2e3726e0e0d0ba66a49852e2a3749df028818b6b3cfee",
)

_turn = itertools.cycle(range(len(SEEDS)))


def production_identity() -> Identity:
    """The next pooled key whose node id solves the production id puzzle."""
    bits = DHTConfig().id_puzzle_bits
    identity = Identity.from_seed(bytes.fromhex(SEEDS[next(_turn)]))
    if not id_puzzle_ok(identity.node_id, bits):
        return Identity.generate_node(bits)
    return identity


def write_node_key(path: Path) -> Path:
    """Put a pooled production key at ``path`` (e.g. ``STATE_DIR/node.key``, where a public
    node looks for its key), creating the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    production_identity().save(path)
    return path


def key_args(directory: Path, name: str) -> list[str]:
    """``["--key", PATH]`` for an ``overlay bootstrap``/``supernode`` process: a pooled key
    written to ``directory/NAME.node.key``."""
    return ["--key", str(write_node_key(directory / f"{name}.node.key"))]
