"""Pure builders: a FineTuneJob -> the manifests of its children (no API calls, no clocks, no randomness).

Children of one job, all owned by it (ownerReferences) and labelled for selection:

- ``<job>-workers``: a headless Service under which every worker pod's hostname resolves.
- ``<job>-a<attempt>-config``: a ConfigMap with the TrainerConfig JSON of that attempt.
- ``<job>-a<attempt>``: one batch/v1 Indexed Job per attempt, ``resources.nodes`` pods (completions =
  parallelism), each running ``torchrun --nnodes=N --nproc-per-node=G``; pod ``i`` is node rank ``i`` with
  hostname ``<job>-a<attempt>-<i>``, and index 0 hosts the c10d rendezvous. The Job's pod failure policy fails
  the attempt at the first failed pod (``backoffLimit: 0``): a DDP group cannot lose a member, so the operator
  replaces the whole group from the latest checkpoint. A FineTuneJob labelled ``kueue.x-k8s.io/queue-name``
  creates its Jobs suspended, with Kueue's labels, for Kueue to admit as one gang.
- ``<job>-export-<n>``: the export Job (one pod): exports the trained model (init containers, reading it from the
  job's output, local or S3) and publishes it into the Triton repository (main container).

With ``spec.ensemble`` each member is its own worker group of the same attempt, side by side:
``<job>-a<attempt>-m<k>-config`` and the Job ``<job>-a<attempt>-m<k>`` (label ``finetune.dev/member``), its own
rendezvous (id ``<uid>-<attempt>-m<k>``, on its index-0 pod), checkpoints and progress in
``<job storage>/members/<k>`` and model in ``<output>/members/<k>``; the export Job exports every member and
combines them into one model (``finetune_trainer.ensemble``).
"""

from __future__ import annotations

from typing import Any

from finetune_operator import api, pod_parts, rendezvous
from finetune_operator.ensemble_spec import Member
from finetune_operator.ensemble_steps import combine_args, member_job, member_path, members
from finetune_operator.names import (
    COMPONENT_LABEL,
    EXPORTER,
    JOB_LABEL,
    KUEUE_PREFIX,
    QUEUE_LABEL,
    TRAINER,
    config_name,
    export_name,
    labels,
    name_errors,
    owner_reference,
    rendezvous_endpoint,
    service_name,
    worker_job_name,
)
from finetune_operator.settings import RDZV_PORT, Settings
from finetune_operator.steps import export_args, publish_args, trainer_config
from finetune_trainer import contract
from finetune_trainer.config import TrainerConfig

CONFIG_DIR = "/etc/finetune"
CONFIG_FILE = f"{CONFIG_DIR}/trainer.json"


def spec_errors(job: api.FineTuneJob, settings: Settings) -> list[str]:
    """What a valid spec still cannot do on this cluster, one message per field."""
    errors = name_errors(job.metadata.name, job.spec.resources.nodes, ensemble=job.spec.ensemble is not None)
    if not job.spec.checkpoint.storage and not settings.default_storage:
        errors.append(
            "spec.checkpoint.storage: required on a cluster (pods are ephemeral; checkpoints, progress and the "
            "model live there): set s3://bucket/prefix, or FINETUNE_DEFAULT_STORAGE on the operator"
        )
    if job.spec.serving.enabled and not job.spec.serving.triton_url:
        errors.append(
            "spec.serving.tritonUrl: required when serving.enabled is true on a cluster (the job succeeds only "
            "once that Triton serves the published model)"
        )
    return errors


# --- shared pieces ------------------------------------------------------------------------------------------


def _metadata(job: api.FineTuneJob, uid: str, name: str, lbls: dict[str, str]) -> dict[str, Any]:
    tpl = job.spec.template
    meta: dict[str, Any] = {
        "name": name,
        "namespace": job.metadata.namespace or "default",
        "labels": {**tpl.labels, **lbls},
        "ownerReferences": [owner_reference(job.metadata.name, uid)],
    }
    if tpl.annotations:
        meta["annotations"] = dict(tpl.annotations)
    return meta


def job_storage(job: api.FineTuneJob, settings: Settings, uid: str, *, legacy_layout: bool = False) -> str | None:
    """Where this job's checkpoints and progress.json live: ``<checkpoint.storage>/<namespace>/<name>/<uid>``
    (without the uid for a job an older operator started: ``legacy_layout``)."""
    root = job.spec.checkpoint.storage or settings.default_storage
    if not root:
        return None
    return contract.job_prefix(root, job.metadata.namespace, job.metadata.name, None if legacy_layout else uid)


def model_output(job: api.FineTuneJob, settings: Settings, uid: str, *, legacy_layout: bool = False) -> str | None:
    """Where rank 0 uploads the final model (spec.output, else ``<job storage>/model-output``)."""
    if job.spec.output:
        return job.spec.output
    storage = job_storage(job, settings, uid, legacy_layout=legacy_layout)
    return f"{storage}/{contract.MODEL_OUTPUT}" if storage else None


# --- trainer config -----------------------------------------------------------------------------------------


def trainer_config_for(job: api.FineTuneJob, settings: Settings, uid: str, *,
                       legacy_layout: bool = False) -> TrainerConfig:  # fmt: skip
    """The TrainerConfig every worker of ``job`` reads (the same builder `finetune run` uses)."""
    output = model_output(job, settings, uid, legacy_layout=legacy_layout)
    if output != job.spec.output:
        job = job.model_copy(update={"spec": job.spec.model_copy(update={"output": output})})
    # Relative paths: the container's working directory is the pod's work volume.
    return trainer_config(
        job,
        "output",
        checkpoint_storage=settings.default_storage,
        progress_file=f"output/{contract.PROGRESS_FILE}",
        metrics_port=settings.trainer_metrics_port or None,
        uid=None if legacy_layout else uid,
    )


def member_config_for(job: api.FineTuneJob, settings: Settings, uid: str, member: Member, *,
                      legacy_layout: bool = False) -> TrainerConfig:  # fmt: skip
    """Member ``member``'s TrainerConfig: its seed and model, the job's hold-outs, and its own folders (checkpoints
    and progress in ``<job storage>/members/<k>``, model in ``<output>/members/<k>``)."""
    output = model_output(job, settings, uid, legacy_layout=legacy_layout)
    with_output = job.model_copy(update={"spec": job.spec.model_copy(update={"output": output})})
    key = contract.member_uid(None if legacy_layout else uid, member.index)
    cfg = trainer_config_for(member_job(with_output, member), settings, key)
    return cfg.model_copy(update={"split_seed": job.spec.hyperparameters.seed})


def config_map(job: api.FineTuneJob, uid: str, attempt: int, settings: Settings, *,
               legacy_layout: bool = False, member: Member | None = None) -> dict[str, Any]:  # fmt: skip
    name = job.metadata.name
    index = None if member is None else member.index
    if member is None:
        cfg = trainer_config_for(job, settings, uid, legacy_layout=legacy_layout)
    else:
        cfg = member_config_for(job, settings, uid, member, legacy_layout=legacy_layout)
    lbls = labels(name, TRAINER, attempt=attempt, **({} if index is None else {"member": index}))
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, uid, config_name(name, attempt, index), lbls),
        "data": {"trainer.json": cfg.to_json() + "\n"},
    }


# --- workers ------------------------------------------------------------------------------------------------


def service(job: api.FineTuneJob, uid: str) -> dict[str, Any]:
    """Headless Service giving each worker a stable DNS name (rank 0 hosts the c10d rendezvous)."""
    name = job.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, uid, service_name(name), labels(name, TRAINER)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_LABEL: name, COMPONENT_LABEL: TRAINER},
            "ports": [{"name": "rdzv", "port": RDZV_PORT, "targetPort": RDZV_PORT, "protocol": "TCP"}],
        },
    }


def worker_command(job: api.FineTuneJob, uid: str, attempt: int, settings: Settings,
                   member: int | None = None) -> list[str]:  # fmt: skip
    """A worker pod's command: the launcher (index 0 hosts the c10d store; the others wait for it, with the spec's
    timeouts), then torchrun, one of ``nodes`` agents of its group."""
    rdzv_id = f"{uid}-{attempt}" if member is None else f"{uid}-{attempt}-m{member}"
    where = rendezvous_endpoint(job.metadata.name, attempt, job.spec.resources.nodes, member)
    return rendezvous.launcher_command(job, settings, endpoint=where, rdzv_id=rdzv_id, config=CONFIG_FILE)


def worker_pod_template(job: api.FineTuneJob, uid: str, attempt: int, settings: Settings,
                        member: int | None = None) -> dict[str, Any]:  # fmt: skip
    """The pod template of a worker group's Job: the same for every rank (the Job controller sets the index)."""
    name = job.metadata.name
    res = job.spec.resources
    env = [
        {"name": contract.ENV_JOB, "value": name},
        {"name": contract.ENV_ATTEMPT, "value": str(attempt)},
        {"name": contract.ENV_NODE_INDEX, "valueFrom": {"fieldRef": {"fieldPath": INDEX_FIELD}}},
        rendezvous.POD_IP_ENV,
        *pod_parts.s3_env(job.spec.checkpoint.s3),
    ]
    if not res.gpus_per_node and res.cpu:
        # torchrun sets one thread per process; on CPU share the pod's cores instead.
        env.append({"name": "OMP_NUM_THREADS", "value": str(_threads(res.cpu, res.procs))})
    container = pod_parts.container(job, settings, "trainer", worker_command(job, uid, attempt, settings, member), env)
    ports = [{"name": "rdzv", "containerPort": RDZV_PORT, "protocol": "TCP"}]
    if settings.trainer_metrics_port:
        # Local process k serves on port + k (finetune_trainer.metrics); the PodMonitor keeps metrics and metrics-N.
        for k in range(res.procs):
            port = settings.trainer_metrics_port + k
            ports.append({"name": f"metrics-{k}" if k else "metrics", "containerPort": port, "protocol": "TCP"})
    container["ports"] = ports
    container["resources"] = pod_parts.pod_resources(res)
    container["volumeMounts"] += [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    shm: dict[str, Any] = {"medium": "Memory"}
    if res.shm_size:
        shm["sizeLimit"] = res.shm_size
    volumes = [
        {"name": "config", "configMap": {"name": config_name(name, attempt, member)}},
        {"name": "work", "emptyDir": {}},
        {"name": "dshm", "emptyDir": shm},
    ]
    spec = pod_parts.pod_spec(job, settings, [container], volumes)
    spec["subdomain"] = service_name(name)  # an Indexed Job's pod i is then <job name>-i.<service>
    extra = {"attempt": attempt} | ({} if member is None else {"member": member})
    meta = _metadata(job, uid, "", labels(name, TRAINER, **extra))
    return {"metadata": {k: v for k, v in meta.items() if k in ("labels", "annotations")}, "spec": spec}


# The pod's index, as the Job controller writes it into an Indexed Job's pods.
INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def failure_policy(containers: list[str]) -> dict[str, Any]:
    """The Job fails at once when the trainer says its input is bad (exit 2), and when a pod is disrupted (an
    eviction, a drain, a preempting pod, a lost node): the operator restarts the whole group itself, without
    spending backoffLimit on a disruption. Any other failure fails it too (``backoffLimit: 0``)."""
    rules: list[dict[str, Any]] = [
        {"action": "FailJob", "onExitCodes": {"containerName": c, "operator": "In",
                                              "values": sorted(contract.PERMANENT_EXITS)}}
        for c in containers
    ]  # fmt: skip
    rules.append({"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]})
    return {"rules": rules}


def _job(job: api.FineTuneJob, uid: str, name: str, lbls: dict[str, str], template: dict[str, Any],
         kueue: dict[str, str], *, pods: int, indexed: bool, deadline: int | None,
         containers: list[str]) -> dict[str, Any]:  # fmt: skip
    """A batch/v1 Job around ``template``: ``pods`` pods that must all succeed, failing at the first failure."""
    meta = _metadata(job, uid, name, {**kueue, **lbls})  # on the Job only: Kueue manages the Job, not its pods
    spec: dict[str, Any] = {
        "completions": pods,
        "parallelism": pods,
        "backoffLimit": 0,
        # A new pod only once the old one has stopped (the default with a pod failure policy, stated).
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": failure_policy(containers),
        # Queued by Kueue: created suspended, admitted (unsuspended) by Kueue as one gang of ``pods`` pods.
        "suspend": QUEUE_LABEL in kueue,
        "template": template,
    }
    if indexed:
        spec["completionMode"] = "Indexed"
    if deadline is not None:
        spec["activeDeadlineSeconds"] = max(int(deadline), 1)
    if job.spec.ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = job.spec.ttl_seconds_after_finished
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}


def kueue_labels(job_labels: dict[str, str] | None) -> dict[str, str]:
    """The FineTuneJob's Kueue labels (queue-name, priority-class), which its Jobs carry for Kueue."""
    return {k: v for k, v in (job_labels or {}).items() if k.startswith(KUEUE_PREFIX)}


def worker_job(job: api.FineTuneJob, uid: str, attempt: int, settings: Settings, member: int | None = None, *,
               job_labels: dict[str, str] | None = None, deadline: int | None = None) -> dict[str, Any]:  # fmt: skip
    """One worker group: an Indexed Job of ``resources.nodes`` pods (``deadline``: the seconds of
    activeDeadlineSeconds the FineTuneJob has left)."""
    name = job.metadata.name
    extra = {"attempt": attempt} | ({} if member is None else {"member": member})
    template = worker_pod_template(job, uid, attempt, settings, member)
    return _job(job, uid, worker_job_name(name, attempt, member), labels(name, TRAINER, **extra), template,
                kueue_labels(job_labels), pods=job.spec.resources.nodes, indexed=True, deadline=deadline,
                containers=["trainer"])  # fmt: skip


def _threads(cpu: str, procs: int) -> int:
    """Whole cores per process from a CPU quantity ("2", "500m", "1.5")."""
    try:
        cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    except ValueError:
        return 1
    return max(1, int(cores // max(procs, 1)))


def worker_group(job: api.FineTuneJob, uid: str, attempt: int, settings: Settings, *, legacy_layout: bool = False,
                 job_labels: dict[str, str] | None = None, deadline: int | None = None) -> list[dict[str, Any]]:
    """Everything one training attempt needs, in creation order: config, service, the workers' Job; with an
    ensemble, a config and a Job per member (each member its own worker group)."""
    ms = members(job)
    configs = [config_map(job, uid, attempt, settings, legacy_layout=legacy_layout, member=m) for m in ms] or [
        config_map(job, uid, attempt, settings, legacy_layout=legacy_layout)
    ]
    jobs = [worker_job(job, uid, attempt, settings, m.index, job_labels=job_labels, deadline=deadline)
            for m in ms] or [worker_job(job, uid, attempt, settings, job_labels=job_labels, deadline=deadline)]
    return [*configs, service(job, uid), *jobs]


# --- export and publication ---------------------------------------------------------------------------------


def export_containers(job: api.FineTuneJob, uid: str, settings: Settings, *,
                      legacy_layout: bool = False) -> tuple[list[dict], dict]:  # fmt: skip
    """The export init container (it reads the trained model from the job's output, local or s3://) and the
    publish container (the job's uid is its idempotency key: one model version per job). An ensemble has one
    export init container per member and a ``combine`` one after them."""
    py = [settings.trainer_python, "-m", "finetune_trainer"]
    storage_env = pod_parts.s3_env(job.spec.checkpoint.s3)
    output = model_output(job, settings, uid, legacy_layout=legacy_layout)
    steps = []
    for m in members(job) or [None]:
        where = f"{pod_parts.WORK_DIR}/export" if m is None else f"{member_path(pod_parts.WORK_DIR, m.index)}/export"
        one = job if m is None else member_job(job, m)
        model = f"{output if m is None else member_path(output or '', m.index)}/model"
        name = "export" if m is None else f"export-m{m.index}"
        steps.append(pod_parts.container(job, settings, name, [*py, *export_args(one, model, where)], storage_env))
    if job.spec.ensemble is not None:
        steps.append(pod_parts.container(job, settings, "combine", [*py, *_combine(job, uid, settings, legacy_layout)],
                                storage_env))
    for step in steps:
        step["resources"] = pod_parts.pod_resources(job.spec.resources, gpus=1)
    exported = f"{pod_parts.WORK_DIR}/export"
    publish = [*py, *publish_args(job, exported, gpu=bool(job.spec.resources.gpus_per_node), key=uid)]
    publish_env = pod_parts.s3_env(job.spec.serving.s3) or storage_env
    publisher = pod_parts.container(job, settings, "publish", publish, publish_env)
    return steps, publisher


def _combine(job: api.FineTuneJob, uid: str, settings: Settings, legacy_layout: bool) -> list[str]:
    """The combine step's arguments: member 0's config names the held-out splits every member shares; the
    ensemble's metrics go to ``<job storage>/ensemble/metrics.json``, where the operator reads them."""
    ms = members(job)
    exports = [f"{member_path(pod_parts.WORK_DIR, m.index)}/export" for m in ms]
    storage = job_storage(job, settings, uid, legacy_layout=legacy_layout)
    config = member_config_for(job, settings, uid, ms[0], legacy_layout=legacy_layout).model_dump_json(by_alias=True)
    metrics = f"{storage}/{contract.ENSEMBLE_METRICS}" if storage else None
    return combine_args(job, exports, f"{pod_parts.WORK_DIR}/export", config_json=config, metrics_to=metrics)


def export_job(job: api.FineTuneJob, uid: str, n: int, settings: Settings, *, legacy_layout: bool = False,
               job_labels: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Export try ``n``: a Job of one pod that exports the trained model (init containers) and then publishes it
    (main container). It asks for the job's cpu and memory and at most one GPU (TensorRT builds on one)."""
    name = job.metadata.name
    steps, publisher = export_containers(job, uid, settings, legacy_layout=legacy_layout)
    spec = pod_parts.pod_spec(job, settings, [publisher], [{"name": "work", "emptyDir": {}}])
    spec["initContainers"] = steps
    lbls = labels(name, EXPORTER, export=n)
    meta = _metadata(job, uid, "", lbls)
    template = {"metadata": {k: v for k, v in meta.items() if k in ("labels", "annotations")}, "spec": spec}
    containers = [c["name"] for c in (*steps, publisher)]
    return _job(job, uid, export_name(name, n), lbls, template, kueue_labels(job_labels), pods=1, indexed=False,
                deadline=None, containers=containers)  # fmt: skip
