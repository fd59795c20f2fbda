"""The Kubernetes manifests and the image definition under deploy/: every document parses, round-trips through the
Kubernetes API models of the official Python client without losing a field (a misspelt or misplaced field is
dropped by the models, so the round trip differs), every container command is one `wearfed` accepts, and every
path the Dockerfile copies exists. No cluster and no Docker daemon run here: this is the schema check that can."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from federation.cli import build_parser

kubernetes = pytest.importorskip("kubernetes", reason="the dev extra's kubernetes client is not installed")
ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
MODELS = {("v1", "Service"): "V1Service", ("v1", "ConfigMap"): "V1ConfigMap", ("v1", "Namespace"): "V1Namespace",
          ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim", ("apps/v1", "Deployment"): "V1Deployment",
          ("apps/v1", "StatefulSet"): "V1StatefulSet"}


def documents() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def _strip(value: object) -> object:
    """Drop None and empty containers, the way the client's serialisation drops unset fields."""
    if isinstance(value, dict):
        kept = {k: _strip(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


@pytest.mark.parametrize(("name", "doc"), documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifest_round_trips_through_the_api_models(name: str, doc: dict) -> None:
    client = kubernetes.client.ApiClient()
    model = MODELS.get((doc["apiVersion"], doc["kind"]))
    assert model, f"{name}: no model for {doc['apiVersion']} {doc['kind']}"
    obj = client._ApiClient__deserialize(doc, model)  # the client's own deserialiser (no public one for dicts)
    back = client.sanitize_for_serialization(obj)
    assert _strip(back) == _strip(doc), f"{name}: {doc['kind']} {doc['metadata']['name']} has fields the API lacks"


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def _env_names(container: dict) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def test_every_container_runs_a_command_wearfed_accepts() -> None:
    parser = build_parser()
    seen = 0
    for _name, doc in documents():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            if not c["image"].startswith("wearfed:"):
                continue
            args = [re.sub(r"\$\((\w+)\)", lambda m: f"x-{m.group(1)}", a) for a in c["args"]]
            refs = set(re.findall(r"\$\((\w+)\)", " ".join(c["args"])))
            assert refs <= _env_names(c), f"{c['name']}: args use undefined variables {refs - _env_names(c)}"
            ns, extra = parser.parse_known_args(args)
            assert not extra, f"{c['name']}: wearfed does not know {extra}"
            seen += 1
    assert seen >= 2  # the cloud replicas and the gateway pool


def test_cloud_replicas_and_gateway_pool_are_what_docs_say() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for _n, d in documents()}
    assert docs[("Deployment", "cloud")]["spec"]["replicas"] >= 2
    pool = docs[("StatefulSet", "gw-1")]
    assert pool["spec"]["replicas"] == 3  # a StatefulSet: a member comes back under its own name
    assert "--pool-member" in pool["spec"]["template"]["spec"]["containers"][0]["args"]


def test_dockerfile_copies_only_what_exists() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_set() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
    assert kinds.count("StatefulSet") == 3 and kinds.count("Deployment") == 1
    assert all(d["metadata"].get("namespace") == "wearfed" for d in yaml.safe_load_all(out.stdout)
               if d and d["kind"] != "Namespace")
