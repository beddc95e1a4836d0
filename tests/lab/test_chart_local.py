"""The chart's own wiring, run for real: the rendered bootstrap and supernode pods' command,
args and env are started as local processes, each in its own network namespace (a lab
"public" host standing in for a pod with hostNetwork) with a private mount namespace that
provides the pod's /data volume and resolves the headless-service DNS names the chart wired.
A client then attaches and ``overlay lookup`` finds it by the bootstrap DNS name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.process.test_chart import (
    CHART_DIR,
    FULLNAME,
    bootstrap_dns_names,
    find,
    load_values,
    merged_values,
    render_manifests,
)

if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("unshare"):
    pytest.skip("needs root, nftables and unshare for network/mount namespaces",
                allow_module_level=True)

from tests.helpers.netutil import wait_until
from tools.natlab import Lab

BIN = str(Path(sys.executable).parent)


def pod_commands(values: dict[str, Any]) -> list[tuple[str, list[str], dict[str, str]]]:
    """(pod name, argv, env) for every pod the chart's StatefulSets would create."""
    pods = []
    for sts in find(render_manifests(values), "StatefulSet"):
        container = sts["spec"]["template"]["spec"]["containers"][0]
        argv = [*container.get("command", []), *container.get("args", [])]
        for ordinal in range(sts["spec"]["replicas"]):
            name = f"{sts['metadata']['name']}-{ordinal}"
            env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
            env["POD_NAME"] = name
            pods.append((name, argv, env))
    return pods


def in_pod(argv: list[str], hosts_file: Path, data_dir: Path) -> list[str]:
    """Run ``argv`` with the pod's /data volume and DNS, like the container would."""
    script = ('mount --bind "$1" /etc/hosts && mkdir -p /data && mount --bind "$2" /data '
              '&& shift 2 && exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "in-pod",
            str(hosts_file), str(data_dir), *argv]




def short(pod: str) -> str:
    return pod.removeprefix(f"{FULLNAME}-")


def test_rendered_pods_form_a_working_overlay(tmp_path):
    values = load_values(CHART_DIR / "ci" / "hostnetwork-values.yaml")
    values["bootstrap"]["replicaCount"] = 1
    values["supernode"]["replicaCount"] = 2
    merged = merged_values(values)
    pods = pod_commands(values)
    assert sorted(short(p) for p, _, _ in pods) == ["bootstrap-0", "supernode-0", "supernode-1"]
    (boot_addr,) = bootstrap_dns_names(values)
    boot_dns = boot_addr.rsplit(":", 1)[0]
    assert any(boot_addr in arg for _, argv, _ in pods for arg in argv), \
        "the supernodes' --bootstrap must come from the chart"

    topology = {"hosts": {short(p): {"kind": "public"} for p, _, _ in pods}}
    topology["hosts"]["user"] = {"kind": "public"}
    with Lab(topology) as lab:
        hosts_file = tmp_path / "hosts"
        hosts_file.write_text(f"127.0.0.1 localhost\n{lab.public_ip('bootstrap-0')} {boot_dns}\n")
        env_base = {"PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONUNBUFFERED": "1"}
        # bootstrap pods first, as the StatefulSets would come up
        for pod, argv, env in sorted(pods, key=lambda p: "supernode" in p[0]):
            data = tmp_path / pod
            data.mkdir(mode=0o700)
            log = open(tmp_path / f"{pod}.log", "wb")
            lab.popen(short(pod), in_pod(argv, hosts_file, data),
                      env={**env_base, **env, "HOST_IP": lab.public_ip(short(pod))},
                      stdout=log, stderr=subprocess.STDOUT)

        def ready(pod: str) -> bool:
            port = merged[short(pod).rsplit("-", 1)[0]]["httpPort"]
            r = lab.run(short(pod), [sys.executable, "-c", (
                "import urllib.request,sys;"
                f"sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:{port}/readyz',"
                "timeout=2).status==200 else 1)")], timeout=10)
            return r.returncode == 0

        for pod, _, _ in pods:
            wait_until(lambda pod=pod: ready(pod), 30,
                       f"{pod} ready (log: {(tmp_path / f'{pod}.log').read_text()[-2000:]})")

        alice_dir = tmp_path / "alice"
        alice_dir.mkdir(mode=0o700)
        client_log = open(tmp_path / "client.log", "wb")
        lab.popen("user", in_pod([f"{BIN}/overlay", "client", "--user", "alice",
                                  "--key", "/data/alice.key", "--state-dir", "/data",
                                  "--bootstrap", boot_addr], hosts_file, alice_dir),
                  env=env_base, stdout=client_log, stderr=subprocess.STDOUT)

        def looked_up() -> dict[str, Any] | None:
            r = lab.run("user", in_pod([f"{BIN}/overlay", "lookup", "alice", "--json",
                                        "--bootstrap", boot_addr], hosts_file, tmp_path),
                        timeout=20)
            if r.returncode != 0:
                return None
            found: dict[str, Any] = json.loads(r.stdout)
            return found

        found = wait_until(looked_up, 30, "alice online in a lookup")
        port = merged["supernode"]["port"]
        supernodes = {f"{lab.public_ip(short(p))}:{port}" for p, _, _ in pods
                      if "supernode" in p}
        assert found["online"] is True
        assert found["devices"][0]["supernode"] in supernodes
