"""Security properties of what the project renders: the restricted Pod Security Standard for every pod the
operator builds and every Deployment the chart installs, credentials only as Secret references, Triton's model
control reachable only from the operator and its export pods (NetworkPolicy), and only the publish step calling
Triton's load/unload. The end-to-end canary and RBAC run is tests/cluster/test_security.py.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from finetune_operator import api, resources
from finetune_operator.settings import Settings
from tests.fixtures.observability import ROOT, helm_template
from tests.unit.pss import job_pods as pods_of_jobs
from tests.unit.pss import restricted_violations

K8S = kubernetes_validate.latest_version()
SETTINGS = Settings(trainer_image="registry.example/trainer:1")
UID = "00000000-0000-4000-8000-000000000001"
TRITON = ["--set", "triton.enabled=true", "--set", "triton.modelRepository.s3.uri=s3://models/triton"]
CHART_CONFIGS = {
    "default": [],
    "clusterwide-peering": ["--set", "watch.clusterwide=true", "--set", "peering.enabled=true", "--set",
                            "replicaCount=2"],
    "triton-s3-gpu": [*TRITON, "--set", "triton.gpus=1", "--set", "triton.modelRepository.s3.credentialsSecret=s3",
                      "--set", "storage.s3.credentialsSecret=s3", "--set", "imagePullSecrets={regcred}"],
    "triton-pvc": ["--set", "triton.enabled=true", "--set", "triton.modelRepository.type=pvc", "--set",
                   "triton.modelRepository.pvc.claimName=models"],
    "triton-networkpolicy": [*TRITON, "--set", "triton.networkPolicy.enabled=true", "--set",
                             "watch.namespaces={team-a}"],
}  # fmt: skip
# Variables that hold credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, *_PASSWORD, ...).
SECRETISH = re.compile(r"(ACCESS_KEY|SECRET|SESSION_TOKEN|_TOKEN$|PASSWORD|CREDENTIAL)", re.I)


def job(name: str, namespace: str, **spec: Any) -> api.FineTuneJob:
    base = {
        "model": {"name": "bert-base-uncased"},
        "dataset": {"train": "s3://data/train.csv"},
        "checkpoint": {"storage": "s3://ckpt", "s3": {"endpoint": "http://minio:9000", "credentialsSecret": "s3"}},
        "template": {"imagePullSecrets": ["regcred"]},
    }
    return api.parse_job({"metadata": {"name": name, "namespace": namespace}, "spec": {**base, **spec}})


SERVING = {"enabled": True, "repository": "s3://models/triton", "tritonUrl": "http://triton:8000",
           "s3": {"endpoint": "http://minio:9000", "credentialsSecret": "models"}}  # fmt: skip


def job_pods() -> list[dict]:
    """Worker and export pods of a CPU job, a multi-node GPU job and an int8 job publishing from S3."""
    jobs = [
        job("cpu", "team-a", serving=SERVING),
        job("gpu", "team-a", resources={"nodes": 2, "gpusPerNode": 4}, serving={**SERVING, "quantize": True}),
    ]
    pods = []
    for j in jobs:
        pods += pods_of_jobs([*resources.worker_group(j, UID, 1, SETTINGS), resources.export_job(j, UID, 1, SETTINGS)])
    return pods


@pytest.fixture(scope="module")
def charts(helm_bin: str) -> dict[str, list[dict]]:
    return {name: helm_template(helm_bin, *args) for name, args in CHART_CONFIGS.items()}


def pod_templates(objs: list[dict]) -> list[tuple[str, dict]]:
    return [(f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]) for o in objs if o["kind"] == "Deployment"]


# --- Pod Security Standard "restricted" ---------------------------------------------------------------------


def test_the_checker_catches_each_restricted_rule() -> None:
    good = job_pods()[0]["spec"]
    assert restricted_violations(good) == []
    breaks = {
        "hostNetwork": lambda s: s.update(hostNetwork=True),
        "hostPath": lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "privileged": lambda s: s["containers"][0]["securityContext"].update(privileged=True),
        "allowPrivilegeEscalation": lambda s: s["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
        "capabilities.add": lambda s: s["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
        "capabilities.drop": lambda s: s["containers"][0]["securityContext"]["capabilities"].update(drop=["NET_RAW"]),
        "runAsNonRoot": lambda s: [s["securityContext"].pop("runAsNonRoot"),
                                   s["containers"][0]["securityContext"].pop("runAsNonRoot")],
        "runAsUser": lambda s: s["securityContext"].update(runAsUser=0),
        "seccompProfile": lambda s: [s["securityContext"].pop("seccompProfile"),
                                     s["containers"][0]["securityContext"].pop("seccompProfile")],
        "Unconfined": lambda s: s["containers"][0]["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        "hostPort": lambda s: s["containers"][0]["ports"].append({"containerPort": 80, "hostPort": 80}),
        "volume type": lambda s: s["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}),
        "sysctls": lambda s: s["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
    }  # fmt: skip
    for rule, apply in breaks.items():
        spec = yaml.safe_load(yaml.safe_dump(good))
        apply(spec)
        assert restricted_violations(spec), f"{rule}: not flagged"
    spec = yaml.safe_load(yaml.safe_dump(good))
    spec["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    assert restricted_violations(spec) == [], "NET_BIND_SERVICE is the one capability restricted allows"


def test_worker_and_export_pods_meet_the_restricted_standard() -> None:
    pods = job_pods()
    assert {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods} == {"trainer", "exporter"}
    for pod in pods:
        kubernetes_validate.validate(pod, K8S, strict=True)
        assert restricted_violations(pod["spec"], pod["metadata"].get("annotations")) == [], pod["metadata"]["name"]


@pytest.mark.parametrize("config", sorted(CHART_CONFIGS))
def test_chart_deployments_meet_the_restricted_standard(charts: dict[str, list[dict]], config: str) -> None:
    templates = pod_templates(charts[config])
    assert templates, config
    for where, template in templates:
        violations = restricted_violations(template["spec"], template["metadata"].get("annotations"))
        assert violations == [], f"{config}: {where}: {violations}"


# --- credentials: only Secret references --------------------------------------------------------------------


SECRET_FLAG = re.compile(r"^--?[a-z-]*(secret|password|token|access-?key)[a-z-]*=", re.I)


def test_credentials_reach_pods_only_as_secret_references(charts: dict[str, list[dict]]) -> None:
    specs = [(p["metadata"]["name"], p["spec"]) for p in job_pods()]
    specs += [(f"{config}: {where}", t["spec"]) for config, objs in charts.items() for where, t in pod_templates(objs)]
    seen_refs = 0
    for where, spec in specs:
        for secret in spec.get("imagePullSecrets") or []:
            assert set(secret) == {"name"}, f"{where}: registry credentials by name only: {secret}"
        for c in spec.get("initContainers", []) + spec["containers"]:
            for env in c.get("env") or []:  # the chart may render an empty env: as null
                if SECRETISH.search(env["name"]):
                    assert "value" not in env, f"{where}/{c['name']}: {env['name']} has an inline value"
                    assert "secretKeyRef" in env.get("valueFrom", {}), f"{where}/{c['name']}: {env}"
                    seen_refs += 1
            flags = [a for a in (c.get("command") or []) + (c.get("args") or []) if SECRET_FLAG.match(a)]
            assert not flags, f"{where}/{c['name']}: credentials on the command line: {flags}"
    assert seen_refs >= 6, "expected the S3 credentials of workers, exporters, operator and Triton as references"
    # The trainer config (a ConfigMap) names the Secret, never its content.
    config = resources.config_map(job("cpu", "team-a"), UID, 1, SETTINGS)["data"]["trainer.json"]
    assert '"credentialsSecret": "s3"' in config and not re.search(r'"(accessKey|secretKey)"\s*:', config)


# --- Triton model control -----------------------------------------------------------------------------------


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector match."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]  # fmt: skip
        if not ok:
            return False
    return True


def admits(policy: dict, pod: dict, port: str) -> bool:
    """Whether ``policy`` lets ``pod`` (a Pod or pod template with metadata.namespace) reach ``port`` (by name)
    of the pods it selects, per the NetworkPolicy ingress semantics (no rule matching: denied)."""
    labels, ns = pod["metadata"].get("labels") or {}, pod["metadata"]["namespace"]
    ns_labels = {"kubernetes.io/metadata.name": ns}
    for rule in policy["spec"].get("ingress") or []:
        if rule.get("ports") and not any(p.get("port") == port for p in rule["ports"]):
            continue
        peers = rule.get("from")
        if not peers:
            return True
        for peer in peers:
            pod_sel, ns_sel = peer.get("podSelector"), peer.get("namespaceSelector")
            if pod_sel is None and ns_sel is None:
                continue  # ipBlock: not a pod
            in_ns = _selects(ns_sel, ns_labels) if ns_sel is not None else ns == policy["metadata"]["namespace"]
            if in_ns and (pod_sel is None or _selects(pod_sel, labels)):
                return True
    return False


def _policy(objs: list[dict]) -> dict:
    (policy,) = [o for o in objs if o["kind"] == "NetworkPolicy"]
    return policy


def _pod(template: dict, namespace: str) -> dict:
    return {"metadata": {**template["metadata"], "namespace": namespace}}


def test_triton_control_ports_admit_only_the_operator_and_its_export_pods(charts: dict[str, list[dict]]) -> None:
    objs = charts["triton-networkpolicy"]
    policy = _policy(objs)
    kubernetes_validate.validate(policy, K8S, strict=True)
    templates = dict(pod_templates(objs))
    triton = templates["Deployment/finetune-operator-triton"]
    operator = templates["Deployment/finetune-operator"]
    assert _selects(policy["spec"]["podSelector"], triton["metadata"]["labels"])
    assert not _selects(policy["spec"]["podSelector"], operator["metadata"]["labels"])

    j = job("sent", "team-a", serving=SERVING)
    (worker, exporter) = pods_of_jobs([*resources.worker_group(j, UID, 1, SETTINGS), resources.export_job(j, UID, 1,
                                                                                                     SETTINGS)])
    (elsewhere,) = pods_of_jobs([resources.export_job(job("sent", "team-b", serving=SERVING), UID, 1, SETTINGS)])
    stranger = {"metadata": {"namespace": "team-a", "labels": {"app": "web"}}}
    for port in ("http", "grpc"):
        assert admits(policy, _pod(operator, "finetune-system"), port), f"operator -> {port}"
        assert admits(policy, exporter, port), f"export pod -> {port}"
        assert not admits(policy, worker, port), f"worker pod -> {port}: workers never talk to Triton"
        assert not admits(policy, elsewhere, port), f"export pod of an unwatched namespace -> {port}"
        assert not admits(policy, stranger, port), f"any pod -> {port}"
    assert admits(policy, stranger, "metrics"), "metrics stay open unless metricsFrom is set"


def test_networkpolicy_example_matches_the_chart_and_opens_inference_to_labelled_clients(helm_bin: str) -> None:
    path = ROOT / "manifests" / "triton" / "networkpolicy.yaml"
    example = yaml.safe_load(path.read_text())
    header = path.read_text().split("\napiVersion")[0]
    assert "URL path" in header and "docs/security.md" in header
    client_peer = {"namespaceSelector": {}, "podSelector": {"matchLabels": {"finetune.dev/inference-client": "true"}}}
    values = ["--set", "triton.modelRepository.s3.uri=s3://finetune-models/triton", "--set",
              "triton.networkPolicy.enabled=true", "--set-json",
              f"triton.networkPolicy.inferenceFrom=[{json.dumps(client_peer)}]"]  # fmt: skip
    objs = helm_template(helm_bin, *TRITON, *values)
    rendered = _policy(objs)
    for label in ("helm.sh/chart", "app.kubernetes.io/managed-by"):
        rendered["metadata"]["labels"].pop(label)
    assert example == rendered, f"{path} drifted from the chart: render it again (see its header)"
    client = {"metadata": {"namespace": "shop", "labels": {"finetune.dev/inference-client": "true"}}}
    other = {"metadata": {"namespace": "shop", "labels": {"app": "web"}}}
    assert admits(example, client, "http") and admits(example, client, "grpc")
    assert not admits(example, other, "http")
    # What a NetworkPolicy cannot do: the admitted inference client reaches the very port that serves
    # load/unload (docs/security.md: restricted API or an inference-only proxy close this).
    control_ports = {p["port"] for p in example["spec"]["ingress"][0]["ports"]}
    assert control_ports == {p["port"] for p in example["spec"]["ingress"][1]["ports"]}


PACKAGES = [ROOT / "operator" / "finetune_operator", ROOT / "trainer_image" / "finetune_trainer"]


def test_only_the_publish_step_calls_triton_model_control() -> None:
    """load_model/unload_model (and raw /v2/repository calls) appear only in finetune_trainer/triton_load.py (the
    publish step's Triton side), which runs in the export pod the operator creates; the operator itself only asks
    readiness and metadata."""
    callers = set()
    for package in PACKAGES:
        for path in package.rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "load_model", "unload_model"
                ):  # fmt: skip
                    callers.add(str(path.relative_to(package.parent)))
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and "v2/repository" in node.value:
                    callers.add(str(path.relative_to(package.parent)))
    assert callers == {"finetune_trainer/triton_load.py"}, callers
    j = job("sent", "team-a", serving=SERVING)
    children = [*resources.worker_group(j, UID, 1, SETTINGS), resources.export_job(j, UID, 1, SETTINGS)]
    publishers = [
        c["name"]
        for pod in pods_of_jobs(children)
        for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
        if "publish" in c["command"]
    ]
    assert publishers == ["publish"], "only the export pod's publish container may load models"


def test_triton_restricted_api_keeps_model_control_from_inference_clients(triton_install, tmp_path) -> None:
    """The closing step docs/security.md describes, on the real Triton: with --http-restricted-api and
    --grpc-restricted-protocol on model-repository, load/unload need a header only the publisher holds, while
    health, metadata and inference stay open on the same ports."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from tests.fixtures.triton import launch

    header, value = "finetune-control", "s3cr3t-from-a-secret"
    restrict = [f"--http-restricted-api=model-repository:{header}={value}",
                f"--grpc-restricted-protocol=model-repository:{header}={value}"]  # fmt: skip
    (tmp_path / "repo").mkdir()
    server = launch(triton_install, tmp_path / "repo", tmp_path / "triton.log", extra=tuple(restrict))
    try:
        # Over gRPC Triton expects the header with the prefix triton-grpc-protocol-.
        clients = [(httpclient.InferenceServerClient(server.http_url), header),
                   (grpcclient.InferenceServerClient(server.grpc_url),
                    f"triton-grpc-protocol-{header}")]  # fmt: skip
        for c, key in clients:
            assert c.is_server_live() and c.is_server_ready()  # health and metadata: open
            with pytest.raises(InferenceServerException) as refused:
                c.load_model("sentiment")
            assert key in str(refused.value) and "restricted" in str(refused.value).lower(), refused.value
            with pytest.raises(InferenceServerException) as allowed:
                c.load_model("sentiment", headers={key: value})  # passes the gate; the model does not exist
            assert "restricted" not in str(allowed.value).lower() and "sentiment" in str(allowed.value)
            c.close()
    finally:
        server.stop()


def test_docs_explain_the_control_and_inference_split() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    for needed in ("NetworkPolicy", "URL path", "--http-restricted-api", "triton.networkPolicy", "exporter"):
        assert needed in text, needed
    assert (ROOT / "docs" / "reliability.md").is_file()
