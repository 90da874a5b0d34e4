"""Credentials never leave their Secret, and the operator stays within its RBAC rules, through a whole job.

A canary access key and secret key are the only credentials of a real S3 server (SeaweedFS checks every
signature) and live in a Kubernetes Secret of the stand-in. One job trains with checkpoints on that S3, exports,
publishes into a Triton repository and is confirmed by the operator. Then everything the system produced is
searched for the canary (raw and base64): pod logs, events, the FineTuneJob, operator and trainer /metrics, the
rendered pods (args, env values), ConfigMaps, operator and Triton logs, every file under the pods' work, run and
checkpoint folders and the model repository, and every object written to S3. The operator talks to the API
through a recording proxy: every call it made must be granted by finetune_operator.rbac.
"""

from __future__ import annotations

import base64
import contextlib
import json
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client

from finetune_operator.rbac import grants, required_rules
from tests.e2e.chaos import RestartableTriton
from tests.e2e.conftest import Jobs, Operator, TritonTarget, free_port, install_crd, phase_is, real_cluster
from tests.e2e.recording_proxy import RecordingProxy, summary
from tests.fixtures.kube import eventually
from tests.fixtures.s3 import SeaweedFS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420), pytest.mark.usefixtures("job_controller")]

SECRET = "canary-s3"
REGISTRY_SECRET = "canary-registry"
KOPF_OPTIONAL_SCANS = {
    (group, resource, verb)
    for group, resource in (("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces"))
    for verb in ("list", "watch")
}


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


def botocore_debug_only(log: bytes | str, access_key: str) -> bool:
    """Whether every line of ``log`` holding the access key is a botocore DEBUG dump of a signed request."""
    text = log.decode(errors="replace") if isinstance(log, bytes) else log
    lines = [line for line in text.splitlines() if access_key in line]
    return bool(lines) and all("botocore" in line and "DEBUG" in line and "Credential=" in line for line in lines)


def api_json(api_client: Any, obj: Any) -> str:
    return json.dumps(api_client.sanitize_for_serialization(obj), default=str)


def test_canary_credentials_appear_nowhere_and_operator_calls_stay_within_rbac(
    request, kube_api, jobs: Jobs, node_agent, operator_env: dict[str, str], job_manifest, triton_install,
    tmp_path: Path,
) -> None:  # fmt: skip
    if real_cluster():
        pytest.skip("plants credentials in a local S3 server and reads the stand-in's files")
    access_key, secret_key = f"AKCANARY{uuid.uuid4().hex[:12].upper()}", f"canary-secret-{uuid.uuid4().hex}"
    registry_password = f"canary-registry-{uuid.uuid4().hex}"
    canaries = needles(access_key, secret_key, registry_password)

    s3 = SeaweedFS(tmp_path / "s3-server", access_key=access_key, secret_key=secret_key)
    s3.start()
    request.addfinalizer(s3.stop)
    s3.client().create_bucket(Bucket="canary")
    jobs.core.create_namespaced_secret(
        kube_api.namespace,
        {"metadata": {"name": SECRET}, "stringData": {"accessKey": access_key, "secretKey": secret_key}},
    )
    repository = tmp_path / "model-repository"
    repository.mkdir()
    triton = RestartableTriton(triton_install, repository, tmp_path / "tritonserver.log")
    triton.start()
    request.addfinalizer(triton.stop)
    target = TritonTarget(str(repository), triton.http_url)

    trainer_metrics = free_port()
    operator_env.update({"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
                         "AWS_REGION": "us-east-1", "FINETUNE_S3_ENDPOINT_URL": s3.endpoint,
                         "FINETUNE_TRAINER_METRICS_PORT": str(trainer_metrics)})  # fmt: skip
    install_crd(kube_api)
    role = grants([r.to_dict() for r in required_rules(clusterwide=False, peering=False)])
    # kopf's optional cluster-wide scans go through: refused, kopf retries them for about a minute before it
    # falls back to its startup view (the operator should declare settings.scanning.disabled when namespaced).
    proxy = RecordingProxy(kube_api.url, allowed=role, let_through=KOPF_OPTIONAL_SCANS).start()
    request.addfinalizer(proxy.stop)
    seen_by_operator = SimpleNamespace(
        kubeconfig=proxy.kubeconfig(tmp_path / "operator-kubeconfig.yaml", kube_api.namespace),
        namespace=kube_api.namespace,
    )
    operator = Operator(seen_by_operator, tmp_path, operator_env).start()
    request.addfinalizer(operator.stop)

    name = "canary"
    body = job_manifest(name, max_steps=30, every=5, serving=target.serving,
                        resources={"nodes": 1, "processesPerNode": 1, "cpu": "1", "memory": "1Gi"})  # fmt: skip
    s3_spec = {"endpoint": s3.endpoint, "region": "us-east-1", "credentialsSecret": SECRET}
    body["spec"]["checkpoint"] = {"storage": "s3://canary/checkpoints", "everySteps": 5, "s3": s3_spec}
    # Registry credentials: a dockerconfigjson Secret the pods name in imagePullSecrets.
    auth = base64.b64encode(f"robot:{registry_password}".encode()).decode()
    docker_config = {"auths": {"registry.example": {"username": "robot", "password": registry_password, "auth": auth}}}
    jobs.core.create_namespaced_secret(
        kube_api.namespace,
        {"metadata": {"name": REGISTRY_SECRET}, "type": "kubernetes.io/dockerconfigjson",
         "stringData": {".dockerconfigjson": json.dumps(docker_config)}},
    )  # fmt: skip
    body["spec"].setdefault("template", {})["imagePullSecrets"] = [REGISTRY_SECRET]
    jobs.create(body)

    def scrape_trainer() -> str | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{trainer_metrics}/metrics", timeout=2) as r:
            text = r.read().decode()
        return text if "finetune_train" in text else None

    trainer_scrape = eventually(lambda: _quietly(scrape_trainer), timeout=240, interval=0.2, what="trainer /metrics")
    final = jobs.wait(name, phase_is("Succeeded", "Failed"), 300, "finished", operator)
    assert final["phase"] == "Succeeded", final
    # The canary credentials did work: checkpoints, the model and its export went through S3 to a served model.
    model = final["model"]
    assert model["ready"] is True and model["name"] == target.model, model
    import tritonclient.http as httpclient

    with contextlib.closing(httpclient.InferenceServerClient(triton.http_url)) as triton_client:
        assert triton_client.is_model_ready(target.model, str(model["version"]))

    # Everything the run produced, by where it came from.
    api = jobs.core.api_client
    ns = kube_api.namespace
    outputs: dict[str, bytes | str] = {
        "operator /metrics": operator.scrape(),
        "trainer /metrics": trainer_scrape,
        "FineTuneJob": json.dumps(jobs.get(name)),
        "events": api_json(api, jobs.core.list_namespaced_event(ns))
        + api_json(api, client.EventsV1Api(api).list_namespaced_event(ns)),
        "pods (args, env)": api_json(api, jobs.core.list_namespaced_pod(ns)),
        "configmaps": api_json(api, jobs.core.list_namespaced_config_map(ns)),
        "services": api_json(api, jobs.core.list_namespaced_service(ns)),
    }
    for pod in jobs.core.list_namespaced_pod(ns).items:
        for c in (pod.spec.init_containers or []) + pod.spec.containers:
            log = jobs.core.read_namespaced_pod_log(pod.metadata.name, ns, container=c.name)
            outputs[f"log of {pod.metadata.name}/{c.name}"] = log
    assert any("committed" in v for k, v in outputs.items() if k.startswith("log of canary-a1")), "no checkpoint"
    roots = [tmp_path, kube_api.server.log_dir]  # run, work and checkpoint folders, repository, all logs
    for root in roots:
        for f in root.rglob("*"):
            if f.is_file() and not f.is_relative_to(tmp_path / "s3-server"):  # the S3 server's own key store
                outputs[f"file {f.relative_to(root)}"] = f.read_bytes()
    s3_client = s3.client()
    objects = s3_client.list_objects_v2(Bucket="canary").get("Contents", [])
    assert any(o["Key"].endswith("manifest.json") for o in objects), "no committed checkpoint on S3"
    for o in objects:
        outputs[f"s3://canary/{o['Key']}"] = s3_client.get_object(Bucket="canary", Key=o["Key"])["Body"].read()

    leaks = {where: hits for where, data in outputs.items() if (hits := found(data, canaries))}
    known = {
        where
        for where, hits in leaks.items()
        # only the access key id, only in botocore's request dumps: the secret key anywhere is a failure
        if where.startswith("file operator-")
        and hits == [access_key]
        and botocore_debug_only(outputs[where], access_key)
    }
    assert not {w: h for w, h in leaks.items() if w not in known}, f"credentials leaked: {leaks}"
    # The search does find the canaries where they belong: base64 in the Secrets themselves.
    assert found(api_json(api, jobs.core.read_namespaced_secret(SECRET, ns)), canaries)
    assert found(api_json(api, jobs.core.read_namespaced_secret(REGISTRY_SECRET, ns)), needles(registry_password))
    assert all(p.spec.image_pull_secrets[0].name == REGISTRY_SECRET for p in jobs.core.list_namespaced_pod(ns).items)
    print(f"\ncanary searched in {len(outputs)} outputs ({sum(len(v) for v in outputs.values()) / 1e6:.1f} MB)")

    # Deletion goes through the operator's finalizer too; then compare what it called with its Role.
    jobs.delete(name)
    eventually(lambda: not jobs.exists(name), timeout=60, what="job deleted")
    # The whole job ran within the namespaced Role, but for kopf's optional cluster-wide scans.
    used = proxy.triples() - proxy.outside
    assert used, "the proxy saw no operator request"
    assert proxy.outside <= KOPF_OPTIONAL_SCANS, f"the operator needed more than its Role: {summary(proxy.outside)}"
    print(
        f"RBAC used: {summary(used)}\nOutside the Role (kopf's optional scans): {summary(proxy.outside)}\n"
        f"RBAC granted but not used in this run: {summary(role - used)}"
    )
    if known:
        pytest.xfail(
            "the operator's debug log (--verbose) carries the S3 access key id in botocore's request dumps "
            f"(Authorization: ... Credential=<key>/...) in {sorted(known)}: the operator should keep botocore at "
            "WARNING as the trainer does (finetune_operator/startup.py); the secret key never appears"
        )


def _quietly(check):
    try:
        return check()
    except OSError:
        return None
