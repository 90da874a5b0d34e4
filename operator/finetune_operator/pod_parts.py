"""The parts every child pod of a FineTuneJob shares: its restricted security contexts, requests equal to limits,
the spec's scheduling fields (``spec.template``), the trainer container's environment and termination message,
and S3 credentials by Secret reference."""

from __future__ import annotations

import copy
from typing import Any

from finetune_operator import api
from finetune_operator.settings import Settings
from finetune_trainer import contract
from finetune_trainer.config import S3Spec

WORK_DIR = "/workspace"
RUN_AS = 1000


def s3_env(s3: S3Spec | None) -> list[dict[str, Any]]:
    """S3 connection variables: credentials by Secret reference, never inline."""
    if s3 is None:
        return []
    env: list[dict[str, Any]] = []
    if s3.credentials_secret:
        for var, key in (
            (contract.ENV_S3_ACCESS_KEY, contract.SECRET_ACCESS_KEY),
            (contract.ENV_S3_SECRET_KEY, contract.SECRET_SECRET_KEY),
        ):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": s3.credentials_secret, "key": key}}})
    if s3.endpoint:
        env.append({"name": contract.ENV_S3_ENDPOINT, "value": s3.endpoint})
    if s3.region:
        env.append({"name": contract.ENV_S3_REGION, "value": s3.region})
    if s3.addressing_style != "auto":
        env.append({"name": contract.ENV_S3_ADDRESSING_STYLE, "value": s3.addressing_style})
    return env


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_resources(res: api.Resources, *, gpus: int | None = None) -> dict[str, Any]:
    """Requests = limits: cpu and memory as the spec asks, ``gpus`` GPUs (default: gpusPerNode)."""
    amounts: dict[str, str] = {}
    if res.cpu:
        amounts["cpu"] = res.cpu
    if res.memory:
        amounts["memory"] = res.memory
    count = res.gpus_per_node if gpus is None else min(gpus, res.gpus_per_node)
    if count:
        amounts["nvidia.com/gpu"] = str(count)
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def pod_spec(job: api.FineTuneJob, settings: Settings, containers: list[dict], volumes: list[dict]) -> dict:
    tpl = job.spec.template
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": pod_security(),
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "containers": containers,
        "volumes": volumes,
    }
    if tpl.service_account_name:
        spec["serviceAccountName"] = tpl.service_account_name
    if tpl.node_selector:
        spec["nodeSelector"] = dict(tpl.node_selector)
    if tpl.tolerations:
        spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in tpl.tolerations]
    if tpl.affinity:
        spec["affinity"] = tpl.affinity
    if tpl.priority_class_name:
        spec["priorityClassName"] = tpl.priority_class_name
    if tpl.scheduler_name:
        spec["schedulerName"] = tpl.scheduler_name
    if tpl.runtime_class_name:
        spec["runtimeClassName"] = tpl.runtime_class_name
    if tpl.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in tpl.image_pull_secrets]
    return spec


def container(job: api.FineTuneJob, settings: Settings, name: str, command: list[str], env: list[dict]) -> dict:
    tpl = job.spec.template
    base_env = [
        {"name": "HOME", "value": WORK_DIR},
        {"name": "HF_HOME", "value": f"{WORK_DIR}/.cache/huggingface"},
        {"name": "TOKENIZERS_PARALLELISM", "value": "false"},
        {"name": contract.ENV_TERMINATION_LOG, "value": contract.TERMINATION_LOG},
    ]
    container: dict[str, Any] = {
        "name": name,
        "image": tpl.image or settings.trainer_image,
        "command": command,
        "env": copy.deepcopy(base_env + env + list(tpl.env)),
        "securityContext": container_security(),
        "terminationMessagePath": contract.TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "workingDir": WORK_DIR,
        "volumeMounts": [{"name": "work", "mountPath": WORK_DIR}],
    }
    if tpl.image_pull_policy:
        container["imagePullPolicy"] = tpl.image_pull_policy
    return container
