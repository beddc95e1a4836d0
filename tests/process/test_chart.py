"""The Helm chart in charts/overlay, rendered by Helm's own engine (helm-python-sdk: Helm's Go
SDK behind a C ABI, no helm binary and no cluster).

What is checked: strict `helm lint` is clean, every rendered manifest passes strict schema
validation (kubernetes-validate) at the lowest and the highest Kubernetes version the chart
declares in Chart.yaml, bad values fail with the schema's own message, and the properties an
operator relies on (one public Service per pod with externalTrafficPolicy Local, UDP and TCP on
one port, bootstrap nodes wired by DNS name, hardened pods, keys never in a manifest, PDB,
probes, graceful drain, helm test hook).

`render_manifests(values)` is the reusable entry point: it returns the rendered manifests as
Python dicts (a later test starts the rendered pod commands as local processes with it).
"""

from __future__ import annotations

import base64
import functools
import re
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.version import Version

from tests.helpers.repo import REPO

CHART_DIR = REPO / "charts" / "overlay"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
RELEASE = "demo"
NAMESPACE = "p2p"
FULLNAME = f"{RELEASE}-overlay"
ROLES = ("bootstrap", "supernode")

Manifest = dict[str, Any]


# --------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=1)
def _chart() -> helm.Chart:
    # Loaded charts are immutable and thread-safe; one per test process.
    return helm.Chart.load(CHART_DIR)


def render_raw(
    values: dict[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt included), as `helm template` would print it.

    `values` are user values, coalesced with the chart's values.yaml exactly as on install.
    Raises helm.HelmValuesError (schema) or helm.HelmRenderError (template `fail`).
    """
    return _chart().render(values or {}, name=release, namespace=namespace, is_install=True)


def render_manifests(
    values: dict[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[Manifest]:
    """The rendered Kubernetes objects (helm test hooks included) as Python dicts."""
    docs: list[Manifest] = []
    for path, text in sorted(render_raw(values, release=release, namespace=namespace).items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def load_values(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text()) or {}
    assert isinstance(loaded, dict)
    return loaded


def find(docs: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        d for d in docs
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def merged_values(values: dict[str, Any]) -> dict[str, Any]:
    return _chart().merge_values(values)


def start_script(sts: Manifest) -> str:
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-c"]
    script = container["args"][0]
    assert isinstance(script, str)
    return script


def bootstrap_dns_names(values: dict[str, Any]) -> list[str]:
    """What the chart must wire: <pod>.<headless service>.<ns>.svc.<domain>:<port>."""
    v = merged_values(values)
    port = v["bootstrap"]["port"]
    return [
        f"{FULLNAME}-bootstrap-{i}.{FULLNAME}-bootstrap-headless.{NAMESPACE}.svc."
        f"{v['clusterDomain']}:{port}"
        for i in range(v["bootstrap"]["replicaCount"])
    ]


def pod_specs(docs: list[Manifest]) -> list[tuple[str, dict[str, Any]]]:
    specs = [(d["metadata"]["name"], d["spec"]["template"]["spec"])
             for d in find(docs, "StatefulSet")]
    specs += [(d["metadata"]["name"], d["spec"]) for d in find(docs, "Pod")]
    return specs


def _kube_versions() -> tuple[str, str]:
    """Lowest and highest x.y.0 in Chart.yaml's kubeVersion (">=A.B.C-0 <X.Y.0-0")."""
    constraint = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["kubeVersion"]
    m = re.fullmatch(r">=\s*(\d+)\.(\d+)\.0(?:-0)?\s+<\s*(\d+)\.(\d+)\.0(?:-0)?", constraint)
    assert m, f"kubeVersion {constraint!r} is not of the form '>=A.B.0-0 <X.Y.0-0'"
    lo_major, lo_minor, hi_major, hi_minor = map(int, m.groups())
    assert hi_major == lo_major and hi_minor > lo_minor
    return f"{lo_major}.{lo_minor}.0", f"{hi_major}.{hi_minor - 1}.0"


KUBE_LOWEST, KUBE_HIGHEST = _kube_versions()
KUBE_VERSIONS = (KUBE_LOWEST, KUBE_HIGHEST)

CASES = [pytest.param({}, id="defaults")] + [
    pytest.param(load_values(p), id=p.name.removesuffix("-values.yaml")) for p in CI_VALUES
]


# --------------------------------------------------------------------------- lint and schemas


def test_ci_values_cover_every_exposure_mode_and_an_existing_secret() -> None:
    names = {p.name for p in CI_VALUES}
    assert {"nodeport-values.yaml", "loadbalancer-values.yaml", "hostnetwork-values.yaml",
            "existing-secret-values.yaml"} <= names
    modes = {merged_values(load_values(p))["exposure"]["type"] for p in CI_VALUES}
    assert modes == {"NodePort", "LoadBalancer", "hostNetwork"}


def test_declared_kube_versions_are_ones_kubernetes_validate_has_schemas_for() -> None:
    available = {Version(v).release[:2] for v in kubernetes_validate.utils.all_versions()}
    for version in KUBE_VERSIONS:
        assert Version(version).release[:2] in available, (
            f"Chart.yaml claims Kubernetes {version}, but the installed kubernetes-validate "
            f"({kubernetes_validate.__version__}) has no schema for it: upgrade it or change "
            "kubeVersion"
        )


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", CASES)
def test_helm_lint_strict_has_no_findings(values: dict[str, Any], kube_version: str) -> None:
    report = helm.lint(CHART_DIR, values, strict=True, kube_version=f"v{kube_version}")
    assert report["total_charts_linted"] == 1
    assert report["messages"] == [], report["messages"]
    assert report["errors"] == [], report["errors"]


# prometheus-operator's ServiceMonitor is a CRD, so kubernetes-validate has no schema for it.
# This is the subset of monitoring.coreos.com/v1 ServiceMonitor (field names, types, the
# duration pattern and enums of its CRD) that the chart uses, with unknown fields refused.
_DURATION = (r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
             r"(([0-9]+)s)?(([0-9]+)ms)?)$")
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
}
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "additionalProperties": False,
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": {"type": "object"}},
                            "metricRelabelings": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                },
            },
        },
    },
}


def validate_manifest(doc: Manifest, kube_version: str) -> None:
    if doc["apiVersion"] == "monitoring.coreos.com/v1":
        # CRD: checked against the structural subset above instead (see its comment).
        assert doc["kind"] == "ServiceMonitor", doc["kind"]
        jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
        return
    kubernetes_validate.validate(doc, kube_version, strict=True)


def test_strict_validation_really_rejects_unknown_fields() -> None:
    """Guards the test below: strict mode must refuse a field Kubernetes does not have."""
    svc = find(render_manifests({}), "Service")[0]
    svc["spec"]["externalTrafficPolicyy"] = "Local"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(svc, KUBE_LOWEST, strict=True)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", CASES)
def test_every_manifest_is_valid_in_strict_mode(values: dict[str, Any], kube_version: str) -> None:
    docs = render_manifests(values)
    assert docs
    for doc in docs:
        try:
            validate_manifest(doc, kube_version)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes "
                        f"{kube_version}: {exc.message} at {list(exc.absolute_path)}")


def test_service_monitor_scrapes_the_http_port_of_both_roles() -> None:
    values = load_values(CHART_DIR / "ci" / "loadbalancer-values.yaml")
    docs = render_manifests(values)
    (sm,) = find(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"][0]["port"] == "http"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    selector = sm["spec"]["selector"]["matchLabels"]
    selected = [s for s in find(docs, "Service")
                if selector.items() <= s["metadata"]["labels"].items()]
    assert sorted(s["metadata"]["name"] for s in selected) == [
        f"{FULLNAME}-bootstrap-headless", f"{FULLNAME}-supernode-headless"]
    for svc in selected:
        assert "http" in {p["name"] for p in svc["spec"]["ports"]}
    assert not find(render_manifests({}), "ServiceMonitor")


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param({"exposure": {"type": "ClusterIP"}},
                     "at '/exposure/type': value must be one of 'NodePort', 'LoadBalancer', "
                     "'hostNetwork'", id="unknown-exposure-type"),
        pytest.param({"supernode": {"port": "7000"}},
                     "at '/supernode/port': got string, want integer", id="port-as-string"),
        pytest.param({"bootstrap": {"httpPort": 70000}},
                     "at '/bootstrap/httpPort': maximum: got 70,000, want 65,535",
                     id="port-out-of-range"),
        pytest.param({"supernode": {"replicaCount": 0}},
                     "at '/supernode/replicaCount': minimum: got 0, want 1", id="zero-replicas"),
        pytest.param({"supernode": {"service": {"nodePortBase": 8000}}},
                     "at '/supernode/service/nodePortBase': minimum: got 8,000, want 30,000",
                     id="nodeport-outside-range"),
        pytest.param({"supernode": {"advertise": {"addresses": ["example.org"]}}},
                     "at '/supernode/advertise/addresses/0'", id="advertise-not-ip-port"),
        pytest.param({"supernode": {"replicas": 3}},
                     "additional properties 'replicas' not allowed", id="misspelt-key"),
    ],
)
def test_bad_values_fail_with_the_schema_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as excinfo:
        render_manifests(values)
    assert "values don't meet the specifications of the schema" in str(excinfo.value)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param({"exposure": {"type": "LoadBalancer"}},
                     "exposure.type=LoadBalancer needs bootstrap.advertise.addresses to list one "
                     "public IP:PORT per pod (3 pods, 0 addresses)", id="lb-without-addresses"),
        pytest.param({"supernode": {"advertise": {"addresses": ["198.51.100.1:7000"]}}},
                     "supernode.advertise.addresses lists 1 addresses for 3 pods",
                     id="too-few-addresses"),
        pytest.param({"bootstrap": {"enabled": False}},
                     "no bootstrap nodes: enable bootstrap (bootstrap.enabled=true) or list "
                     "supernode.extraBootstrap", id="nothing-to-join"),
        pytest.param({"supernode": {"service": {"nodePortBase": 30401}}},
                     "NodePort ranges overlap: bootstrap 30400-30402 and supernode 30401-30403",
                     id="nodeport-overlap"),
        pytest.param({"supernode": {"service": {"nodePortBase": 32766}}},
                     "supernode.service.nodePortBase 32766 + 3 pods runs past the NodePort range",
                     id="nodeport-past-range"),
        pytest.param({"exposure": {"type": "hostNetwork"}, "supernode": {"httpPort": 8080}},
                     "port 8080 is used by both roles", id="hostnetwork-port-clash"),
    ],
)
def test_inconsistent_values_fail_at_render_with_a_clear_message(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError) as excinfo:
        render_manifests(values)
    assert message in str(excinfo.value)


# --------------------------------------------------------------------------- exposure


@pytest.mark.parametrize("ci_file", ["nodeport", "loadbalancer", "existing-secret"])
def test_every_pod_gets_its_own_public_service(ci_file: str) -> None:
    values = load_values(CHART_DIR / "ci" / f"{ci_file}-values.yaml")
    v = merged_values(values)
    docs = render_manifests(values)
    exposure = v["exposure"]["type"]
    for role in ROLES:
        replicas = v[role]["replicaCount"]
        port = v[role]["port"]
        sts = one(docs, "StatefulSet", f"{FULLNAME}-{role}")
        pod_labels = sts["spec"]["template"]["metadata"]["labels"]
        public = [s for s in find(docs, "Service")
                  if s["metadata"]["labels"].get("overlay/service") == "public"
                  and s["metadata"]["labels"]["app.kubernetes.io/component"] == role]
        assert len(public) == replicas
        for i in range(replicas):
            pod = f"{FULLNAME}-{role}-{i}"
            svc = one(docs, "Service", pod)
            spec = svc["spec"]
            assert spec["type"] == exposure
            assert spec["externalTrafficPolicy"] == "Local"
            # selects exactly this pod of this StatefulSet
            assert spec["selector"]["statefulset.kubernetes.io/pod-name"] == pod
            assert {k: v for k, v in spec["selector"].items()
                    if k != "statefulset.kubernetes.io/pod-name"}.items() <= pod_labels.items()
            protocols = {(p["protocol"], p["port"]) for p in spec["ports"]}
            # DHT over UDP; lookups (and on supernodes attachments) over TCP, same port
            assert protocols == {("UDP", port), ("TCP", port)}
            if exposure == "NodePort":
                node_ports = {p["nodePort"] for p in spec["ports"]}
                assert node_ports == {v[role]["service"]["nodePortBase"] + i}
            else:
                assert all("nodePort" not in p for p in spec["ports"])


def test_loadbalancer_services_carry_static_ips_annotations_and_advertised_addresses() -> None:
    values = load_values(CHART_DIR / "ci" / "loadbalancer-values.yaml")
    docs = render_manifests(values)
    b1 = one(docs, "Service", f"{FULLNAME}-bootstrap-1")
    assert b1["spec"]["loadBalancerIP"] == "203.0.113.11"
    assert b1["spec"]["loadBalancerSourceRanges"] == ["0.0.0.0/0"]
    s2 = one(docs, "Service", f"{FULLNAME}-supernode-2")
    annotations = s2["metadata"]["annotations"]
    assert annotations["metallb.universe.tf/loadBalancerIPs"] == "203.0.113.22"
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-type"] == "external"
    script = start_script(one(docs, "StatefulSet", f"{FULLNAME}-supernode"))
    for i, addr in enumerate(values["supernode"]["advertise"]["addresses"]):
        assert f"{i}) advertise='{addr}' ;;" in script
    sts = one(docs, "StatefulSet", f"{FULLNAME}-supernode")
    env = {e["name"] for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "HOST_IP" not in env


@pytest.mark.parametrize("ci_file", ["nodeport", "hostnetwork"])
def test_advertised_address_is_discovered_from_the_node_ip(ci_file: str) -> None:
    values = load_values(CHART_DIR / "ci" / f"{ci_file}-values.yaml")
    v = merged_values(values)
    docs = render_manifests(values)
    for role in ROLES:
        sts = one(docs, "StatefulSet", f"{FULLNAME}-{role}")
        container = sts["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        script = start_script(sts)
        if ci_file == "nodeport":
            assert f"public_port=$(({v[role]['service']['nodePortBase']} + ordinal))" in script
        else:
            assert f"public_port={v[role]['port']}" in script
        assert '--advertise "$advertise"' in script


def test_host_network_mode_binds_on_the_node_without_public_services() -> None:
    values = load_values(CHART_DIR / "ci" / "hostnetwork-values.yaml")
    docs = render_manifests(values)
    assert not [s for s in find(docs, "Service")
                if s["metadata"]["labels"].get("overlay/service") == "public"]
    for role in ROLES:
        spec = one(docs, "StatefulSet", f"{FULLNAME}-{role}")["spec"]["template"]["spec"]
        assert spec["hostNetwork"] is True
        assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
        # two pods of a role on one node would fight over the port
        anti = spec["affinity"]["podAntiAffinity"]
        required = anti["requiredDuringSchedulingIgnoredDuringExecution"]
        assert required[0]["topologyKey"] == "kubernetes.io/hostname"
        ports = spec["containers"][0]["ports"]
        assert all(p["hostPort"] == p["containerPort"] for p in ports)


# --------------------------------------------------------------------------- wiring


@pytest.mark.parametrize("values", CASES)
def test_supernodes_join_through_the_bootstrap_headless_dns_names(values: dict[str, Any]) -> None:
    docs = render_manifests(values)
    names = bootstrap_dns_names(values)
    script = start_script(one(docs, "StatefulSet", f"{FULLNAME}-supernode"))
    assert f"--bootstrap '{','.join(names)}'" in script
    assert "exec overlay supernode" in script
    # the names resolve: they are this StatefulSet's pods under its governing headless Service
    boot = one(docs, "StatefulSet", f"{FULLNAME}-bootstrap")
    headless = one(docs, "Service", f"{FULLNAME}-bootstrap-headless")
    assert boot["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    boot_labels = boot["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= boot_labels.items()
    assert len(names) == boot["spec"]["replicas"]
    for sts in find(docs, "StatefulSet"):
        assert sts["spec"]["podManagementPolicy"] == "Parallel"


def test_supernode_flags_follow_values() -> None:
    values = load_values(CHART_DIR / "ci" / "nodeport-values.yaml")
    script = start_script(one(render_manifests(values), "StatefulSet", f"{FULLNAME}-supernode"))
    assert "--listen '0.0.0.0:7000'" in script
    assert "--max-clients 500" in script
    assert "--relay-budget '2Mbit'" in script
    assert "--http '0.0.0.0:8081'" in script
    hostnet = load_values(CHART_DIR / "ci" / "hostnetwork-values.yaml")
    script = start_script(one(render_manifests(hostnet), "StatefulSet", f"{FULLNAME}-supernode"))
    assert "--no-relay" in script and "--relay-budget" not in script
    assert "--max-clients" not in script
    boot = start_script(one(render_manifests({}), "StatefulSet", f"{FULLNAME}-bootstrap"))
    assert "exec overlay bootstrap" in boot and "--bootstrap" not in boot


def test_external_bootstrap_nodes_without_a_bootstrap_statefulset() -> None:
    values = {"bootstrap": {"enabled": False},
              "supernode": {"extraBootstrap": ["seed1.example.org:4000", "[2001:db8::1]:4000"]}}
    docs = render_manifests(values)
    assert [d["metadata"]["name"] for d in find(docs, "StatefulSet")] == [f"{FULLNAME}-supernode"]
    script = start_script(docs_sts := one(docs, "StatefulSet", f"{FULLNAME}-supernode"))
    assert "--bootstrap 'seed1.example.org:4000,[2001:db8::1]:4000'" in script
    assert docs_sts["spec"]["replicas"] == 3
    for kv in KUBE_VERSIONS:
        for doc in docs:
            validate_manifest(doc, kv)


@pytest.mark.parametrize("values", CASES)
def test_start_scripts_are_valid_posix_sh_and_exec_the_daemon(values: dict[str, Any]) -> None:
    for sts in find(render_manifests(values), "StatefulSet"):
        script = start_script(sts)
        # Syntax only (-n): nothing is executed.
        result = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True,
                                check=False, timeout=10)
        assert result.returncode == 0, result.stderr
        last = script.rstrip().splitlines()
        assert any(line.startswith("exec overlay ") for line in last), "daemon must be PID 1"


# --------------------------------------------------------------------------- pods


@pytest.mark.parametrize("values", CASES)
def test_pods_are_non_root_read_only_and_drop_all_capabilities(values: dict[str, Any]) -> None:
    specs = pod_specs(render_manifests(values))
    assert len(specs) >= 2
    for name, spec in specs:
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["fsGroup"] == 10001, name
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["runAsUser"] != 0 and sc["runAsGroup"] != 0, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["privileged"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert "limits" in container["resources"] and "requests" in container["resources"]
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, f"{name}: read-only root needs a writable /tmp"


@pytest.mark.parametrize("values", CASES)
def test_probes_hit_healthz_and_readyz_on_the_http_port(values: dict[str, Any]) -> None:
    v = merged_values(values)
    for sts in find(render_manifests(values), "StatefulSet"):
        role = sts["metadata"]["labels"]["app.kubernetes.io/component"]
        container = sts["spec"]["template"]["spec"]["containers"][0]
        http = [p for p in container["ports"] if p["name"] == "http"]
        assert http == [p for p in http if p["containerPort"] == v[role]["httpPort"]] and http
        assert http[0]["protocol"] == "TCP"
        assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        # and the daemon serves HTTP on that port
        assert f":{v[role]['httpPort']}'" in start_script(sts).split("--http ", 1)[1]


@pytest.mark.parametrize("values", CASES)
def test_termination_gives_clients_time_to_move(values: dict[str, Any]) -> None:
    v = merged_values(values)
    for sts in find(render_manifests(values), "StatefulSet"):
        role = sts["metadata"]["labels"]["app.kubernetes.io/component"]
        spec = sts["spec"]["template"]["spec"]
        pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop == ["sleep", str(v[role]["preStopSleepSeconds"])]
        # after the preStop sleep, SIGTERM reaches the daemon (exec'd, PID 1), which tells
        # clients to move; the grace period must leave time for that
        assert spec["terminationGracePeriodSeconds"] > v[role]["preStopSleepSeconds"]
    supernode = one(render_manifests(values), "StatefulSet", f"{FULLNAME}-supernode")
    assert supernode["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60


@pytest.mark.parametrize("values", CASES)
def test_pod_disruption_budget_per_role(values: dict[str, Any]) -> None:
    docs = render_manifests(values)
    for role in ROLES:
        pdb = one(docs, "PodDisruptionBudget", f"{FULLNAME}-{role}")
        assert pdb["spec"]["maxUnavailable"] == 1
        sts = one(docs, "StatefulSet", f"{FULLNAME}-{role}")
        labels = sts["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == role


def test_pods_of_a_role_prefer_different_nodes() -> None:
    for sts in find(render_manifests({}), "StatefulSet"):
        affinity = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        (term,) = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        assert (term["podAffinityTerm"]["labelSelector"]["matchLabels"]
                == sts["spec"]["selector"]["matchLabels"])


# --------------------------------------------------------------------------- keys


KEY_PATTERNS = [
    re.compile(r"overlay-ed25519-secret"),  # the key file header
    re.compile(r"PRIVATE KEY"),
    re.compile(r"\b[0-9a-fA-F]{64}\b"),  # a hex seed
    # a base64 blob (mixed case and digits, unlike long words such as API field names)
    re.compile(r"(?<![A-Za-z0-9+/])(?=[A-Za-z0-9+/]*[0-9])(?=[A-Za-z0-9+/]*[A-Z])"
               r"(?=[A-Za-z0-9+/]*[a-z])[A-Za-z0-9+/]{40,}={0,2}"),
]


def test_key_patterns_catch_real_key_files() -> None:
    """Guards the test below: a key file, or a base64 Secret value of one, is detected."""
    seed = bytes(range(1, 33))
    key_file = f"overlay-ed25519-secret-v1\n{seed.hex()}\n"
    samples = [key_file, f"seed: {seed.hex()}",
               "node.key: " + base64.b64encode(key_file.encode()).decode(),
               "seed: " + base64.b64encode(seed).decode()]
    for sample in samples:
        assert any(p.search(sample) for p in KEY_PATTERNS), sample


@pytest.mark.parametrize("values", CASES)
def test_no_key_material_in_any_rendered_manifest(values: dict[str, Any]) -> None:
    rendered = render_raw(values)
    docs = render_manifests(values)
    assert not find(docs, "Secret"), "the chart must never ship a key"
    for doc in docs:
        assert "stringData" not in doc and "data" not in doc, doc["metadata"]["name"]
    for path, text in rendered.items():
        text = re.sub(r"@sha256:[0-9a-f]{64}", "@sha256:DIGEST", text)  # image digests are fine
        for pattern in KEY_PATTERNS:
            assert not pattern.search(text), f"{path} matches {pattern.pattern}"


def test_keys_are_generated_on_the_pvc_and_survive_upgrades_and_scale_down() -> None:
    docs = render_manifests({})
    for sts in find(docs, "StatefulSet"):
        spec = sts["spec"]
        assert spec["persistentVolumeClaimRetentionPolicy"] == {
            "whenDeleted": "Retain", "whenScaled": "Retain"}
        (claim,) = spec["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "data"
        container = spec["template"]["spec"]["containers"][0]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["STATE_DIR"] == mounts["data"] == "/data"
        script = start_script(sts)
        assert 'key="$STATE_DIR/node.key"' in script
        # kubelet's fsGroup relabelling may have made it group-readable; the daemon would refuse
        assert 'if [ -f "$key" ]; then chmod 0600 "$key"; fi' in script
        assert '--key "$key"' in script and '--state-dir "$STATE_DIR"' in script
        volumes = spec["template"]["spec"]["volumes"]
        assert not [vol for vol in volumes if "secret" in vol]


def test_keys_from_an_existing_secret_get_a_private_copy() -> None:
    values = load_values(CHART_DIR / "ci" / "existing-secret-values.yaml")
    secret = values["identity"]["existingSecret"]
    for sts in find(render_manifests(values), "StatefulSet"):
        role = sts["metadata"]["labels"]["app.kubernetes.io/component"]
        pod = sts["spec"]["template"]["spec"]
        volumes = {vol["name"]: vol for vol in pod["volumes"]}
        assert volumes["identity"]["secret"] == {"secretName": secret, "defaultMode": 0o400}
        # The pod has an fsGroup, which makes Secret files group-readable (0440) whatever the
        # defaultMode; the daemon refuses those, so the script copies the key to memory as 0600.
        assert volumes["key-copy"]["emptyDir"]["medium"] == "Memory"
        container = pod["containers"][0]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["identity"]["readOnly"] is True
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["SECRET_KEY_DIR"] == mounts["identity"]["mountPath"]
        assert env["KEY_DIR"] == mounts["key-copy"]["mountPath"]
        script = start_script(sts)
        assert f'key_source="$SECRET_KEY_DIR/{role}-$ordinal.key"' in script
        assert '(umask 077 && cat "$key_source" > "$key")' in script
        assert 'key="$KEY_DIR/node.key"' in script


def test_without_persistence_state_is_ephemeral_and_notes_warn() -> None:
    values = {"persistence": {"enabled": False}}
    docs = render_manifests(values)
    for sts in find(docs, "StatefulSet"):
        assert "volumeClaimTemplates" not in sts["spec"]
        assert "persistentVolumeClaimRetentionPolicy" not in sts["spec"]
        volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
        assert "emptyDir" in volumes["data"]
    notes = render_raw(values)["overlay/templates/NOTES.txt"]
    assert "WARNING: persistence.enabled=false" in notes


# --------------------------------------------------------------------------- extras


def test_network_policy_opens_the_overlay_port_and_guards_http() -> None:
    values = load_values(CHART_DIR / "ci" / "nodeport-values.yaml")
    docs = render_manifests(values)
    for role in ROLES:
        netpol = one(docs, "NetworkPolicy", f"{FULLNAME}-{role}")
        public, http = netpol["spec"]["ingress"][:2]
        assert "from" not in public  # peers anywhere on the internet
        # both roles answer lookups over TCP on the DHT port
        port = 4000 if role == "bootstrap" else 7000
        assert {(p["protocol"], p["port"]) for p in public["ports"]} == {("UDP", port),
                                                                          ("TCP", port)}
        assert http["from"][0] == {"podSelector": {}}
        assert http["from"][1]["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": "monitoring"}
    assert not find(render_manifests({}), "NetworkPolicy")


@pytest.mark.parametrize("values", CASES)
def test_helm_test_hook_looks_a_user_up_through_the_release(values: dict[str, Any]) -> None:
    (pod,) = find(render_manifests(values), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-c"]
    script = container["args"][0]
    bootstrap = ",".join(bootstrap_dns_names(values))
    assert "name='helm-test-probe'" in script
    assert f"""overlay lookup "$name" --bootstrap '{bootstrap}' --json""" in script
    result = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True,
                            check=False, timeout=10)
    assert result.returncode == 0, result.stderr
    assert "69)" in script and "exit 1" in script


def test_notes_tell_how_to_look_a_user_up() -> None:
    notes = render_raw({})["overlay/templates/NOTES.txt"]
    assert f"kubectl -n {NAMESPACE} exec {FULLNAME}-bootstrap-0 -c overlay --" in notes
    assert f"overlay lookup alice --bootstrap {','.join(bootstrap_dns_names({}))}" in notes
    assert 'overlay lookup alice --bootstrap "$NODE_IP:30400"' in notes
    assert f"helm test {RELEASE} -n {NAMESPACE}" in notes
    lb = render_raw(load_values(CHART_DIR / "ci" / "loadbalancer-values.yaml"))
    assert "overlay lookup alice --bootstrap 203.0.113.10:4000,203.0.113.11:4000" in (
        lb["overlay/templates/NOTES.txt"])


def test_names_fit_kubernetes_limits_with_a_long_release_name() -> None:
    release = "a-very-long-release-name-for-an-overlay-deployment-x"  # 52 characters
    helm.validate_release_name(release)
    docs = render_manifests({}, release=release)
    for doc in docs:
        name = doc["metadata"]["name"]
        assert len(name) <= 63, name
        if doc["kind"] == "StatefulSet":
            # its controller-revision-hash label is <name>-<hash of up to 10 characters>
            assert len(name) + 1 + 10 <= 63, name
