"""The FineTuneJob CRD installed once into the real control plane, the way a user installs it; the operator
running against it out of cluster; the S3 server the pods reach; small job helpers."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from finetune_operator import api
from tests.cluster.operator_process import Operator
from tests.fixtures.kube import KubeApi, eventually, real_cluster
from tests.fixtures.kubelet import NodePool
from tests.fixtures.processes import free_port
from tests.fixtures.s3 import S3Server, delete_bucket

ROOT = Path(__file__).resolve().parents[2]
CRD = f"{api.PLURAL}.{api.GROUP}"
EXTERNAL_S3 = "FINETUNE_E2E_S3_ENDPOINT"  # with FINETUNE_E2E_REAL_CLUSTER=1: an S3 both this machine and pods reach


class ExternalS3:
    """An S3 service given by FINETUNE_E2E_S3_ENDPOINT and the AWS_* credentials (a real cluster's pods cannot
    reach this machine's loopback SeaweedFS). It cannot be stopped: tests that restart S3 skip."""

    running = True

    def __init__(self) -> None:
        self.endpoint = os.environ[EXTERNAL_S3]
        self.access_key = os.environ["AWS_ACCESS_KEY_ID"]
        self.secret_key = os.environ["AWS_SECRET_ACCESS_KEY"]

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key,
                            region_name=os.environ.get("AWS_REGION", "us-east-1"))  # fmt: skip

    def stop(self, crash: bool = False) -> None:
        pytest.skip("restarts the test's S3 server; an external S3 service is not restarted")

    def start(self) -> None:
        pytest.skip("restarts the test's S3 server; an external S3 service is not restarted")


@pytest.fixture
def s3_server(request: pytest.FixtureRequest) -> Iterator[S3Server]:
    """A fresh bucket for this test: on the test's SeaweedFS, or on a real cluster in FINETUNE_E2E_S3_ENDPOINT's
    S3 (deleted at the end either way)."""
    if not real_cluster():
        yield request.getfixturevalue("local_s3_server")
        return
    if not os.environ.get(EXTERNAL_S3):
        pytest.skip(f"a real cluster's pods cannot reach this machine's loopback S3: set {EXTERNAL_S3} and AWS_* "
                    "to an S3 both reach (docs/e2e.md)")  # fmt: skip
    server = ExternalS3()
    bucket = f"finetune-e2e-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=bucket)
    try:
        yield S3Server(server, bucket)  # type: ignore[arg-type]
    finally:
        with contextlib.suppress(Exception):
            delete_bucket(server.client(), bucket)


@pytest.fixture(scope="session")
def finetunejob_crd(kube_cluster: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`kubectl apply --server-side -f manifests/crd.yaml`, then wait until the API serves the kind."""
    kube = KubeApi(kube_cluster, "default", tmp_path_factory.mktemp("crd"))
    kube.kubectl("apply", "--server-side", "-f", str(ROOT / "manifests" / "crd.yaml"))
    # `kubectl wait` fails outright while the new CRD has no conditions yet: poll instead.
    eventually(lambda: _established(kube), timeout=60, interval=0.2, what=f"CRD {CRD} Established")
    return CRD


def _established(kube: KubeApi) -> bool:
    conditions = get_json(kube, "crd", CRD).get("status", {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


@pytest.fixture
def ftj_api(cluster_api: KubeApi, finetunejob_crd: str) -> KubeApi:
    """A fresh namespace on the cluster, with the FineTuneJob CRD installed."""
    return cluster_api


def get_json(kube: KubeApi, *args: str) -> Any:
    return json.loads(kube.kubectl("get", *args, "-o", "json").stdout)


@pytest.fixture
def operator(ftj_api: KubeApi, tmp_path: Path) -> Iterator[Operator]:
    """The real operator process, watching the test's namespace with the admin kubeconfig."""
    env = {"FINETUNE_METRICS_PORT": str(free_port()), "FINETUNE_METRICS_ADDRESS": "127.0.0.1",
           "FINETUNE_POLL_SECONDS": "1", "FINETUNE_BACKOFF_SECONDS": "1"}  # fmt: skip
    op = Operator(ftj_api, tmp_path, env).start()
    try:
        yield op
    finally:
        op.stop()


def job(name: str, storage: Path | str) -> dict:
    """A small two-node job whose pods fit no test node (these tests are about the API, not running pods)."""
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "bert-base-uncased"},
            "dataset": {"train": "s3://data/train.csv"},
            "resources": {"nodes": 2, "cpu": "100", "memory": "1Gi"},
            "checkpoint": {"storage": str(storage)},
        },
    }


def status(kube: KubeApi, name: str) -> dict:
    return get_json(kube, "ftj", name).get("status") or {}


def wait_status(kube: KubeApi, name: str, check: Any, timeout: float, what: str,
                nodes: NodePool | None) -> dict[str, Any]:  # fmt: skip
    """Poll the job's status until ``check`` holds; on timeout print what the cluster and its nodes say."""
    try:
        return eventually(lambda: (s := status(kube, name)) and check(s) and s, timeout=timeout, interval=1,
                          what=what)  # fmt: skip
    except AssertionError:
        print(kube.kubectl("get", "pods,jobs,ftj,workloads,events", "-o", "wide", check=False).stdout[-8000:])
        print(node_logs(nodes))
        raise


def step(s: dict[str, Any]) -> int:
    return int((s.get("progress") or {}).get("step") or 0)


def warnings(kube: KubeApi, name: str) -> list[str]:
    events = get_json(kube, "events", "--field-selector", f"involvedObject.name={name},type=Warning")
    return [e["reason"] for e in events["items"]]


# --- the chart installed with helm, and jobs whose model, data and checkpoints are in S3

CHART = ROOT / "charts" / "finetune-operator"
RELEASE = "ft"
SECRET = "s3-credentials"
ATTEMPT, INDEX = "finetune.dev/attempt", "batch.kubernetes.io/job-completion-index"  # worker pods' labels


def triton_values(s3: S3Server) -> list[str]:
    """`helm install` settings for the chart's Triton over s3://<bucket>/models, read with the Secret's keys."""
    repo = "triton.modelRepository.s3"
    return ["--set", "triton.enabled=true", "--set", f"{repo}.uri={s3.url('models')}",
            "--set", f"{repo}.endpoint={s3.endpoint}", "--set", f"{repo}.region=us-east-1",
            "--set", f"{repo}.credentialsSecret={SECRET}"]  # fmt: skip


def resumed_at(kube: KubeApi, attempt: int) -> int:
    """The step rank 0 of ``attempt`` says it resumed from (waiting until it has said so)."""
    selector = f"{ATTEMPT}={attempt},{INDEX}=0"
    log = eventually(lambda: (text := kube.kubectl("logs", "-l", selector, "--tail=-1", check=False).stdout)
                     and "resumed from checkpoint at step" in text and text, timeout=180, interval=1,
                     what=f"attempt {attempt} resumed from a checkpoint")  # fmt: skip
    return int(log.split("resumed from checkpoint at step ")[1].split()[0])


@pytest.fixture
def release(cluster_api: KubeApi, kube_nodes: NodePool | None, s3_server: S3Server, helm_bin: str):
    """`helm install` into the test's namespace, with S3 credentials in a Secret; `helm uninstall` after."""
    with helm_release(cluster_api, kube_nodes, s3_server, helm_bin) as kube:
        yield kube


@contextlib.contextmanager
def helm_release(kube: KubeApi, nodes: NodePool | None, s3_server: S3Server, helm_bin: str,
                 *values: str) -> Iterator[KubeApi]:  # fmt: skip
    """The chart installed (``--set`` ``values`` added), the S3 server reachable from pods; uninstalled after."""
    if nodes is not None:
        nodes.expose(int(s3_server.endpoint.rsplit(":", 1)[1]))
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET},
              "stringData": {"accessKey": s3_server.access_key, "secretKey": s3_server.secret_key}}  # fmt: skip
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(secret))
    helm = [helm_bin, "--kubeconfig", str(kube.kubeconfig), "--namespace", kube.namespace]
    settings = ["--set", f"storage.s3.endpoint={s3_server.endpoint}", "--set", f"storage.s3.credentialsSecret={SECRET}",
                "--set", "extraEnv[0].name=FINETUNE_POLL_SECONDS", "--set-string", "extraEnv[0].value=1",
                *values]  # fmt: skip
    installed = subprocess.run([*helm, "install", RELEASE, str(CHART), "--wait", "--timeout", "180s", *settings],
                               capture_output=True, text=True, timeout=240)  # fmt: skip
    if installed.returncode != 0:
        pods = kube.kubectl("get", "pods", "-o", "yaml", check=False).stdout[-6000:]
        raise AssertionError(f"helm install failed: {installed.stderr}\n{pods}\n{node_logs(nodes)}")
    try:
        # `--wait` sees the operator's pod Ready (its liveness endpoint) a moment before kopf's webhook server listens:
        # until a server-side dry run passes the webhook, a create would be refused with "connection refused".
        probe = json.dumps(job("webhook-probe", "s3://probe/checkpoints"))
        dry_run = ("create", "--dry-run=server", "-f", "-")
        eventually(lambda: kube.kubectl(*dry_run, stdin=probe, check=False).returncode == 0, timeout=60,
                   interval=0.5, what="the chart's webhook answering")  # fmt: skip
        yield kube
    finally:
        result = subprocess.run([*helm, "uninstall", RELEASE, "--wait", "--timeout", "120s"], capture_output=True,
                                text=True, timeout=180)  # fmt: skip
        assert result.returncode == 0, result.stderr


def node_logs(nodes: NodePool | None, chars: int = 3000) -> str:
    """The tail of every container log the test nodes kept (what `kubectl logs` would show)."""
    if nodes is None:
        return ""
    logs = sorted(nodes.work.rglob("logs/*/*/*.log"))
    return "\n".join(f"--- {p.relative_to(nodes.work)}\n{p.read_text(errors='replace')[-chars:]}" for p in logs)


def upload(s3: S3Server, local: Path, prefix: str) -> str:
    client = s3.client()
    for path in local.rglob("*") if local.is_dir() else [local]:
        if path.is_file():
            key = f"{prefix}/{path.relative_to(local)}" if local.is_dir() else prefix
            client.upload_file(str(path), s3.bucket, key)
    return s3.url(prefix)


def uploaded_job(name: str, s3: S3Server, model: Path, csv: tuple[Path, Path]) -> dict[str, Any]:
    """``s3_job`` with the test's model folder and train/validation CSVs uploaded to the bucket first."""
    train, val = csv
    return s3_job(name, s3, upload(s3, model, "models/tiny"), upload(s3, train, "data/train.csv"),
                  upload(s3, val, "data/val.csv"))  # fmt: skip


def s3_job(name: str, s3: S3Server, model: str, train: str, validation: str) -> dict[str, Any]:
    s3_access = {"endpoint": s3.endpoint, "credentialsSecret": SECRET, "addressingStyle": "path"}
    return {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
        "spec": {
            "model": {"name": model},
            "dataset": {"train": train, "validation": validation},
            "hyperparameters": {"maxSteps": 30, "batchSize": 8, "learningRate": 3e-3, "evalSteps": 10,
                                "warmupRatio": 0.0, "logEverySteps": 2, "maxSeqLength": 32},
            "resources": {"nodes": 2, "processesPerNode": 1, "cpu": "1", "memory": "2Gi"},
            "checkpoint": {"storage": s3.url("checkpoints"), "everySteps": 10, "s3": s3_access},
        },
    }  # fmt: skip
