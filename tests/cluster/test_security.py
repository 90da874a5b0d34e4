"""Credentials never leave their Secret, and the operator stays within its Role, through a whole job on the test
cluster.

A canary access key and secret key are the only credentials of an S3 server of the test's own (SeaweedFS checks
every signature); they live in a Secret, and a registry password in a dockerconfigjson Secret the pods name in
imagePullSecrets. The chart is installed with its Triton over that S3; one two-node job trains with checkpoints
there, exports, publishes and is served. Then everything the system produced is searched for the canaries (raw
and base64): every container's log (operator, Triton, workers, export), events, the FineTuneJob, pods, Jobs,
ConfigMaps and Services as the API returns them, the operator's and a worker's /metrics, every file the nodes
keep (logs, the live pods' volumes), the API server's audit log, and every object written to S3.

The API server's audit log then shows every request the operator's ServiceAccount made: each was allowed, and
each is one the chart's Role grants (finetune_operator.rbac, the rules the chart renders).
"""

from __future__ import annotations

import base64
import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from finetune_operator.rbac import grants, required_rules
from tests.cluster.conftest import RELEASE, SECRET, get_json, helm_release, triton_values, wait_status
from tests.cluster.test_serving import served, serving_job, triton_url
from tests.fixtures.cluster import ControlPlane
from tests.fixtures.kube import KubeApi, eventually
from tests.fixtures.kubelet import NodePool
from tests.fixtures.s3 import S3Server, SeaweedFS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(720)]

REGISTRY_SECRET = "canary-registry"


@pytest.fixture
def canary_s3(tmp_path: Path) -> Iterator[S3Server]:
    """An S3 server whose only credentials are fresh canaries, with one bucket."""
    server = SeaweedFS(tmp_path / "s3-server", access_key=f"AKCANARY{uuid.uuid4().hex[:12].upper()}",
                       secret_key=f"canary-secret-{uuid.uuid4().hex}")  # fmt: skip
    server.start()
    try:
        server.client().create_bucket(Bucket="canary")
        yield S3Server(server, "canary")
    finally:
        server.stop()


def needles(*values: str) -> dict[str, bytes]:
    """Each value as it could leak: raw, and base64 as a Secret's data holds it."""
    out = {}
    for v in values:
        out[v] = v.encode()
        out[f"base64({v})"] = base64.b64encode(v.encode())
    return out


def found(data: bytes | str, canaries: dict[str, bytes]) -> list[str]:
    raw = data.encode() if isinstance(data, str) else data
    return [name for name, needle in canaries.items() if needle in raw]


def port(pod: dict[str, Any], name: str) -> int:
    return next(p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports") or []
                if p.get("name") == name)  # fmt: skip


def scrape(pod: dict[str, Any]) -> str | None:
    """The pod's /metrics at its IP (the test reaches the pod network through the nodes' bridge)."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    try:
        with urllib.request.urlopen(f"http://{ip}:{port(pod, 'metrics')}/metrics", timeout=3) as r:
            return r.read().decode()
    except OSError:
        return None


def worker_metrics(kube: KubeApi, job: str) -> str | None:
    for pod in get_json(kube, "pods", "-l", f"finetune.dev/job={job}")["items"]:
        text = scrape(pod) if "metrics" in json.dumps(pod["spec"]["containers"][0].get("ports")) else None
        if text and "finetune_train" in text:
            return text
    return None


def container_logs(kube: KubeApi) -> dict[str, str]:
    """`kubectl logs` of every container (init containers too) of every pod in the namespace."""
    out = {}
    for pod in get_json(kube, "pods")["items"]:
        spec = pod["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            name = f"{pod['metadata']['name']}/{c['name']}"
            out[f"log of {name}"] = kube.kubectl("logs", pod["metadata"]["name"], "-c", c["name"], check=False).stdout
    return out


def operator_requests(audit_log: Path, account: str) -> list[dict[str, Any]]:
    """The audit events of the ServiceAccount's resource requests (discovery and other paths have no objectRef)."""
    events = [json.loads(line) for line in audit_log.read_text().splitlines() if line.strip()]
    # A request that failed authentication is logged with an empty user.
    return [e for e in events if e["user"].get("username") == account and e.get("objectRef", {}).get("resource")]


def rbac_triple(event: dict[str, Any]) -> tuple[str, str, str]:
    ref = event["objectRef"]
    resource = f"{ref['resource']}/{ref['subresource']}" if ref.get("subresource") else ref["resource"]
    return ref.get("apiGroup", ""), resource, event["verb"]


def test_canary_credentials_appear_nowhere_and_the_operator_stays_within_its_role(
    cluster_api: KubeApi, kube_plane: ControlPlane | None, kube_nodes: NodePool | None, canary_s3: S3Server,
    helm_bin: str, tiny_bert: Path, sentiment_csv: tuple[Path, Path],
) -> None:  # fmt: skip
    if kube_nodes is None:
        pytest.skip("the canary S3 server runs on this machine, which a real cluster's pods cannot reach")
    s3 = canary_s3
    registry_password = f"canary-registry-{uuid.uuid4().hex}"
    canaries = needles(s3.access_key, s3.secret_key, registry_password)
    auth = base64.b64encode(f"robot:{registry_password}".encode()).decode()
    docker_config = {"auths": {"registry.example": {"username": "robot", "password": registry_password, "auth": auth}}}
    cluster_api.kubectl("apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": REGISTRY_SECRET},
        "type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": json.dumps(docker_config)},
    }))  # fmt: skip
    with helm_release(cluster_api, kube_nodes, s3, helm_bin, *triton_values(s3)) as kube:
        job = serving_job("canary", kube, s3, tiny_bert, sentiment_csv)
        job["spec"]["template"] = {"imagePullSecrets": [REGISTRY_SECRET]}
        kube.kubectl("apply", "-f", "-", stdin=json.dumps(job))
        trainer_scrape = eventually(lambda: worker_metrics(kube, "canary"), timeout=300, interval=0.5,
                                    what="a worker's /metrics")  # fmt: skip
        final = wait_status(kube, "canary", lambda s: s.get("phase") in ("Succeeded", "Failed"), 480,
                            "the job finished", kube_nodes)  # fmt: skip
        assert final["phase"] == "Succeeded", final
        # The canary credentials did work: data, model and checkpoints from S3, a version served from S3.
        assert final["model"]["ready"] is True, final["model"]
        assert served(triton_url(kube), final["model"]["version"])

        operator_pod = get_json(kube, "pods", "-l", "app.kubernetes.io/component=operator")["items"][0]
        outputs: dict[str, bytes | str] = {
            "operator /metrics": scrape(operator_pod) or "",
            "worker /metrics": trainer_scrape,
            **{kind: kube.kubectl("get", kind, "-o", "json").stdout
               for kind in ("ftj", "pods", "jobs", "configmaps", "services", "events", "events.events.k8s.io")},
            **container_logs(kube),
        }  # fmt: skip
        assert "finetune_operator" in outputs["operator /metrics"]
        assert any("committed" in v for k, v in outputs.items() if k.startswith("log of canary-a1")), "no checkpoint"
        pods = json.loads(outputs["pods"])["items"]
        workers = [p for p in pods if p["metadata"].get("labels", {}).get("finetune.dev/job") == "canary"]
        assert workers and all(p["spec"]["imagePullSecrets"] == [{"name": REGISTRY_SECRET}] for p in workers)
        # The search does find the canaries where they belong: base64 in the Secrets themselves.
        assert found(kube.kubectl("get", "secret", SECRET, "-o", "json").stdout, canaries)
        assert found(kube.kubectl("get", "secret", REGISTRY_SECRET, "-o", "json").stdout,
                     needles(registry_password))  # fmt: skip
        kube.kubectl("delete", "ftj", "canary", "--wait=true", timeout=120)

    roots = [kube_nodes.work] if kube_nodes else []  # container logs, the live pods' volumes
    roots += [kube_plane.logs] if kube_plane else []  # the control plane's logs, the audit log
    for root in roots:
        for f in root.rglob("*"):
            if f.is_file() and "pki" not in f.relative_to(root).parts:
                outputs[f"file {f.relative_to(root)}"] = f.read_bytes()
    client = s3.client()
    objects = client.list_objects_v2(Bucket=s3.bucket).get("Contents", [])
    assert any(o["Key"].endswith("manifest.json") for o in objects), "no committed checkpoint on S3"
    for o in objects:
        outputs[f"s3://{s3.bucket}/{o['Key']}"] = client.get_object(Bucket=s3.bucket, Key=o["Key"])["Body"].read()
    leaks = {where: hits for where, data in outputs.items() if (hits := found(data, canaries))}
    assert not leaks, f"credentials leaked: {leaks}"
    print(f"\ncanary searched in {len(outputs)} outputs ({sum(len(v) for v in outputs.values()) / 1e6:.1f} MB)")

    if kube_plane is None:
        pytest.skip("the canary search passed; the Role check reads the test cluster's audit log")
    account = f"system:serviceaccount:{cluster_api.namespace}:{RELEASE}-finetune-operator"
    requests = operator_requests(kube_plane.audit_log, account)
    assert requests, f"the audit log has no request of {account}"
    refused = [e for e in requests if e.get("annotations", {}).get("authorization.k8s.io/decision") != "allow"]
    assert not refused, [(rbac_triple(e), e["responseStatus"].get("code")) for e in refused]
    used = {rbac_triple(e) for e in requests}
    role = grants([r.to_dict() for r in required_rules(clusterwide=False, peering=False)])
    assert used <= role, f"the operator used more than finetune_operator.rbac declares: {sorted(used - role)}"
    print(f"RBAC used ({len(requests)} requests): {sorted(used)}\nGranted but not used: {sorted(role - used)}")
