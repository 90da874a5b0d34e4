"""The operator under exactly the Role the chart grants (operator/finetune_operator/rbac.py), authenticated by a
service-account token as in its pod: the real API server's RBAC and OwnerReferencesPermissionEnforcement accept
every call it makes for a job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune_operator import rbac
from tests.cluster.conftest import get_json, job, status
from tests.cluster.operator_process import Operator
from tests.fixtures.kube import KubeApi, eventually, service_account_kubeconfig
from tests.fixtures.processes import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def operator_as_its_service_account(ftj_api: KubeApi, tmp_path: Path) -> Iterator[Operator]:
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "finetune-operator"},
            "rules": [r.to_dict() for r in rbac.required_rules(clusterwide=False, peering=False)]}  # fmt: skip
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "finetune-operator"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "finetune-operator"},
               "subjects": [{"kind": "ServiceAccount", "name": "finetune-operator",
                             "namespace": ftj_api.namespace}]}  # fmt: skip
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "finetune-operator"}}
    for obj in (account, role, binding):
        ftj_api.kubectl("apply", "-f", "-", stdin=json.dumps(obj))
    kubeconfig = service_account_kubeconfig(ftj_api, "finetune-operator", tmp_path / "operator.kubeconfig")
    as_operator = KubeApi(kubeconfig, ftj_api.namespace, tmp_path / "operator")
    env = {"FINETUNE_METRICS_PORT": str(free_port()), "FINETUNE_METRICS_ADDRESS": "127.0.0.1",
           "FINETUNE_POLL_SECONDS": "1", "FINETUNE_BACKOFF_SECONDS": "1"}  # fmt: skip
    op = Operator(as_operator, tmp_path, env).start()
    try:
        yield op
    finally:
        op.stop()
        as_operator.close()


def test_the_charts_role_lets_the_operator_create_a_jobs_children(ftj_api: KubeApi,
                                                                  operator_as_its_service_account: Operator,
                                                                  tmp_path: Path):  # fmt: skip
    ftj_api.kubectl("apply", "-f", "-", stdin=json.dumps(job("rbac", tmp_path / "ckpt")))
    # Children carry blockOwnerDeletion, which the API server allows only to who may update finetunejobs/finalizers.
    eventually(lambda: len(get_json(ftj_api, "pods")["items"]) == 2, timeout=60, interval=0.5,
               what=f"the worker pods; job status {status(ftj_api, 'rbac')}")  # fmt: skip
    kinds = {f"{o['kind']}/{o['metadata']['name']}" for o in get_json(ftj_api, "configmaps,services,jobs")["items"]}
    assert {"ConfigMap/rbac-a1-config", "Service/rbac-workers", "Job/rbac-a1"} <= kinds
    assert status(ftj_api, "rbac")["phase"] == "Pending"
    assert "forbidden" not in operator_as_its_service_account.logs().lower()
