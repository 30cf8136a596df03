"""Rendering and validating convserve's Kubernetes manifests, shared by the deployment tests.

`validate` checks built-in kinds with kubernetes-validate (strict, KUBERNETES_VERSION) and custom
resources with the closed JSON schemas in tests/deploy/schemas/, which $ref the same Kubernetes
definitions for embedded core types. A kind with neither schema is an error, never a pass.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import referencing
import yaml

from deploy_tools import DEPLOY_DIR

# Oldest Kubernetes release these manifests target (native preStop `sleep` is on by default from
# 1.30). deploy/README.md states the same version.
KUBERNETES_VERSION = "1.30"
K8S_DIR = DEPLOY_DIR / "k8s"
SCHEMA_DIR = Path(__file__).parent / "schemas"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice-serving-kserve-v1beta1.json",
}
# What a user can deploy: an overlay, optionally with components (rendered through a temporary
# kustomization that references them, exactly as deploy/README.md tells users to write one).
VARIANTS = {
    "cpu": ("overlays/cpu", ()),
    "gpu": ("overlays/gpu", ()),
    "cpu+keda": ("overlays/cpu", ("components/keda-queue-depth",)),
    "gpu+keda+volume": ("overlays/gpu", ("components/keda-queue-depth", "components/model-repo-volume")),
}
Manifest = dict[str, Any]


def kustomize(kubectl: str, directory: Path) -> list[Manifest]:
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_variant(kubectl: str, variant: str, workdir: Path, k8s_dir: Path = K8S_DIR) -> list[Manifest]:
    overlay, components = VARIANTS[variant]
    if not components:
        return kustomize(kubectl, k8s_dir / overlay)
    # kustomize only accepts relative paths to other kustomizations.
    relative = lambda target: os.path.relpath(k8s_dir / target, workdir)  # noqa: E731
    (workdir / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [relative(overlay)],
                "components": [relative(c) for c in components],
            }
        )
    )
    return kustomize(kubectl, workdir)


@cache
def _kubernetes_definitions() -> referencing.Resource:
    """The strict Kubernetes definitions that the CRD schemas $ref for embedded core types."""
    folder = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}.0-local-strict"
    return referencing.Resource.from_contents(json.loads((folder / "_definitions.json").read_text()))


@cache
def _crd_validator(schema_file: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMA_DIR / schema_file).read_text())
    registry = _kubernetes_definitions() @ referencing.Registry()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(manifest: Manifest) -> None:
    """Raise jsonschema.ValidationError if `manifest` is invalid; fail if it has no schema at all."""
    crd_schema = CRD_SCHEMAS.get((manifest["apiVersion"], manifest["kind"]))
    if crd_schema is not None:
        _crd_validator(crd_schema).validate(manifest)
        return
    try:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.utils.SchemaNotFoundError as error:
        raise AssertionError(
            f"{manifest['kind']} has no schema: add one under tests/deploy/schemas ({error.message})"
        ) from error


def validation_errors(manifests: list[Manifest]) -> list[str]:
    errors = []
    for manifest in manifests:
        try:
            validate(manifest)
        except jsonschema.ValidationError as error:
            where = ".".join(str(p) for p in error.absolute_path)
            errors.append(f"{manifest['kind']}/{manifest['metadata']['name']}: {where}: {error.message}")
    return errors


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(manifests: list[Manifest]) -> Manifest:
    (server,) = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    return server


def server_config(manifests: list[Manifest]) -> dict[str, str]:
    """The CONVSERVE_* settings the container receives (its envFrom ConfigMap plus explicit env)."""
    server = container(manifests)
    (source,) = server["envFrom"]
    config = dict(one(manifests, "ConfigMap", source["configMapRef"]["name"])["data"])
    config.update({e["name"]: e["value"] for e in server.get("env", [])})
    return config


def set_path(manifest: Manifest, path: str, value: Any) -> Manifest:
    """A copy of `manifest` with `value` set at dotted `path` (integers index lists)."""
    changed = copy.deepcopy(manifest)
    *parents, leaf = path.split(".")
    node: Any = changed
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[leaf] = value
    return changed


def rename_key(manifest: Manifest, path: str, new_name: str) -> Manifest:
    """A copy of `manifest` with the key at dotted `path` renamed (a typo), its value kept."""
    changed = copy.deepcopy(manifest)
    *parents, leaf = path.split(".")
    node: Any = changed
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[new_name] = node.pop(leaf)
    return changed
