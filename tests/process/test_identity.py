import os
import stat
import subprocess
import sys

import pytest

from overlay.core.identity import Identity, KeyFileError, node_id_for


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overlay", *args], capture_output=True, text=True, timeout=60
    )


def test_keygen_writes_private_key_file_and_prints_public_id(tmp_path):
    path = tmp_path / "alice.key"
    result = run_cli("keygen", str(path))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    public_id = result.stdout.strip()
    assert Identity.load(path).public_id == public_id
    assert len(bytes.fromhex(public_id)) == 32


def test_keygen_refuses_to_overwrite(tmp_path):
    path = tmp_path / "k"
    assert run_cli("keygen", str(path)).returncode == 0
    before = path.read_bytes()
    result = run_cli("keygen", str(path))
    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_readable_by_others_is_refused(tmp_path, mode):
    path = tmp_path / "k"
    Identity.generate().save(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        Identity.load(path)


def test_daemon_refuses_world_readable_key_with_clear_message(tmp_path):
    path = tmp_path / "node.key"
    Identity.generate().save(path)
    os.chmod(path, 0o644)
    result = run_cli("bootstrap", "--listen", "127.0.0.1:0", "--key", str(path))
    assert result.returncode == 2
    assert "accessible by others" in result.stderr


def test_malformed_key_file_is_refused(tmp_path):
    path = tmp_path / "k"
    path.write_text("not a key\n")
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="not an overlay key file"):
        Identity.load(path)


def test_node_id_is_derived_from_public_key():
    identity = Identity.generate()
    assert identity.node_id == node_id_for(identity.public_key)
    assert len(identity.node_id) == 20
    assert Identity.generate().node_id != identity.node_id
