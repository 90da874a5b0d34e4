"""The I/O around the phase machine: one loop per FineTuneJob that observes, decides and acts.

Each job gets one kopf daemon running :meth:`Controller.run`: it observes the job's Jobs and pods (kopf's
in-memory indexes, fed by watches), Kueue's Workloads of its queued Jobs, its progress.json on the checkpoint
storage and, when publishing, the served model;
calls :func:`lifecycle.reconcile`; creates and deletes children; posts events; patches status. It runs again
whenever one of the job's Jobs or pods or its spec changes, and every FINETUNE_POLL_SECONDS. One loop per job means
no two reconciles of a job ever race, and the loop keeps the status it wrote (the watch may lag behind it).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from finetune_operator import api, confirm, ensemble_status, lifecycle, names, observed
from finetune_operator import status as status_model
from finetune_operator.decision import Decision, JobMeta
from finetune_operator.kube import Kube, KubeError
from finetune_operator.metrics import METRICS, OperatorMetrics
from finetune_operator.observed import Admission, JobView, Observed, PodView, Refusal
from finetune_operator.settings import Settings
from finetune_trainer import contract
from finetune_trainer.config import ConfigError

log = logging.getLogger("finetune_operator")
RECREATE_AFTER = 30.0  # seconds before a created-but-unseen child is created again


@dataclass
class JobMemory:
    """What one job's loop remembers between reconciles (lost on restart, which is harmless)."""

    status: dict[str, Any]
    created: dict[str, float] = field(default_factory=dict)
    deleted: dict[str, float] = field(default_factory=dict)
    progress_read: float = 0.0
    progress: dict[str, Any] | None = None
    members: list[dict[str, Any] | None] = field(default_factory=list)
    ensemble_metrics: dict[str, Any] | None = None
    logs: dict[str, str] = field(default_factory=dict)
    refused: Refusal | None = None  # the API server's answer to the last create that failed, until one succeeds


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch turning ``old`` into ``new`` at the top level (removed fields become null)."""
    patch = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch


class Controller:
    """Per-job reconcile loops plus the hooks kopf's handlers call."""

    def __init__(self, settings: Settings, metrics: OperatorMetrics = METRICS, kube: Kube | None = None):
        self.settings = settings
        self.metrics = metrics
        self._kube = kube
        self.wakeups: dict[tuple[str, str], asyncio.Event] = {}
        self.generations: dict[tuple[str, str], int] = {}
        self._storages: dict[str, Any] = {}

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            self._kube = Kube()
        return self._kube

    async def close(self) -> None:
        if self._kube is not None:
            await self._kube.close()

    # --- hooks for handlers -------------------------------------------------------------------------------

    def wake(self, namespace: str, name: str) -> None:
        event = self.wakeups.get((namespace, name))
        if event is not None:
            event.set()

    def job_changed(self, namespace: str, name: str, generation: int, deleting: bool) -> None:
        """Wake a job's loop when its spec changed (not for its own status writes)."""
        key = (namespace, name)
        if deleting or self.generations.get(key, generation) != generation:
            self.wake(namespace, name)
        self.generations[key] = generation

    # --- the loop -----------------------------------------------------------------------------------------

    async def run(self, body: kopf.Body, pods: Mapping[Any, Iterable[PodView]],
                  jobs: Mapping[Any, Iterable[JobView]], stopped: Any) -> None:  # fmt: skip
        """Reconcile one job until kopf stops this daemon (the job is deleted or the operator exits)."""
        key = (body.metadata.namespace, body.metadata.name)
        event = self.wakeups.setdefault(key, asyncio.Event())
        memory = JobMemory(status=copy.deepcopy(dict(body.get("status") or {})))
        try:
            while not stopped:
                event.clear()
                started = time.monotonic()
                requeue = None
                try:
                    requeue = await self.step(body, list(pods.get(key, ())), list(jobs.get(key, ())), memory)
                except (TimeoutError, KubeError, OSError) as e:
                    log.warning("reconcile of %s/%s failed, retrying: %s", *key, e)
                finally:
                    self.metrics.reconcile_duration.observe(time.monotonic() - started)
                timeout = self.settings.poll_seconds if requeue is None else min(requeue, self.settings.poll_seconds)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout)
        finally:
            if self.wakeups.get(key) is event:
                del self.wakeups[key]

    async def step(self, body: kopf.Body, pods: list[PodView], jobs: list[JobView],
                   memory: JobMemory) -> float | None:  # fmt: skip
        meta = body.metadata
        job_meta = JobMeta(meta.name, meta.namespace, meta.uid, int(meta.get("generation") or 1),
                           dict(meta.labels or {}))  # fmt: skip
        spec = copy.deepcopy(dict(body.spec))
        job = _parse(job_meta, spec)
        jobs = observed.owned(jobs, meta.uid)
        # The Jobs' pods, and pods an older operator made itself (owned by the FineTuneJob).
        pods = observed.owned_pods(pods, jobs) + [p for p in pods if p.owner_uid == meta.uid]
        pods = [await self.with_log_tail(meta.namespace, p, memory) for p in pods]
        admissions = await self.admissions(meta.namespace, jobs)
        create_failures = await self.create_failures(meta.namespace, jobs, pods, job)
        phase = memory.status.get("phase")
        progress = None
        if job is not None and phase in lifecycle.TRAINING:
            finishing = any(p.component == names.TRAINER and p.phase == "Succeeded" for p in pods)
            progress = await self.read_progress(job, meta.uid, memory, force=finishing)
        if job is not None and job.spec.ensemble is not None and phase in (lifecycle.EXPORTING, lifecycle.PUBLISHING):
            await self.read_ensemble_metrics(job, meta.uid, memory)
        served = None
        if job is not None and observed.wants_confirmation(memory.status, pods):
            serving = job.spec.serving
            name = serving.model_name or job.metadata.name
            version = observed.published_version(memory.status, pods)
            served = await asyncio.to_thread(confirm.confirm, serving.triton_url, name, version)
        now = datetime.now(UTC)
        seen = Observed(pods=pods, jobs=jobs, admissions=admissions, create_failures=create_failures,
                        progress=progress, served=served,
                        refused=memory.refused, members=memory.members, ensemble_metrics=memory.ensemble_metrics)
        decision = lifecycle.reconcile(job_meta, spec, memory.status, seen, now, self.settings)
        refused_before = memory.refused
        await self.apply(body, job_meta, decision, memory)
        if memory.refused is not None and memory.refused != refused_before:
            return 0.05  # a new refusal: show it in the status at once
        return decision.requeue

    async def apply(self, body: kopf.Body, meta: JobMeta, decision: Decision,
                    memory: JobMemory) -> None:  # fmt: skip
        clock = time.monotonic()
        for plural, name in decision.delete:
            if clock - memory.deleted.get(f"{plural}/{name}", -1e9) < RECREATE_AFTER:
                continue
            await self.kube.delete(meta.namespace, plural, name)
            memory.deleted[f"{plural}/{name}"] = clock
        for name in decision.force_delete:
            if clock - memory.deleted.get(f"pods/{name}!", -1e9) < RECREATE_AFTER:
                continue
            await self.kube.delete(meta.namespace, "pods", name, grace_seconds=0)
            memory.deleted[f"pods/{name}!"] = clock
        for obj in decision.create:
            ref = f"{obj['kind']}/{obj['metadata']['name']}"
            if clock - memory.created.get(ref, -1e9) < RECREATE_AFTER:
                continue
            memory.created[ref] = clock  # also after a refusal: the next try waits RECREATE_AFTER
            try:
                await self.kube.create(obj)
            except KubeError as e:
                if e.status == 0:
                    raise  # the API server is unreachable: nothing to report to it; the loop retries
                memory.refused = Refusal(e.status, obj["kind"], obj["metadata"]["name"], e.message)
                log.warning("%s/%s: %s", meta.namespace, meta.name, memory.refused.describe())
                break  # the rest of the group waits for the next try
            memory.refused = None
        patch = status_patch(memory.status, decision.status)
        if patch:
            await self.kube.patch_status(meta.namespace, meta.name, patch)
            memory.status = decision.status
        for ev in decision.events:
            kopf.event(body, type=ev.type, reason=ev.reason, message=ev.message[:1000])
            log.info("%s/%s: %s: %s", meta.namespace, meta.name, ev.reason, ev.message)
        if decision.restarted:
            self.metrics.restarts.labels(meta.namespace, meta.name).inc()
        if decision.disrupted:
            self.metrics.disruptions.labels(meta.namespace, meta.name).inc()
        if decision.steps_redone:
            self.metrics.steps_redone.labels(meta.namespace, meta.name).inc(decision.steps_redone)
        if decision.publish_failed:
            self.metrics.publish_failures.labels(meta.namespace, meta.name).inc()
        if decision.published_seconds is not None:
            self.metrics.publish_duration.observe(decision.published_seconds)

    async def admissions(self, namespace: str, jobs: list[JobView]) -> dict[str, Admission]:
        """Kueue's word on each suspended, queued Job: admitted, or why not (its Workload's conditions)."""
        said: dict[str, Admission] = {}
        for j in jobs:
            if j.queued and j.suspended and not j.deleting and not j.failed:
                workloads = await self.kube.workloads(namespace, j.uid)
                if workloads:
                    said[j.name] = observed.admission(workloads[0])
        return said

    async def create_failures(self, namespace: str, jobs: list[JobView], pods: list[PodView],
                              job: api.FineTuneJob | None) -> dict[str, str]:  # fmt: skip
        """The last FailedCreate warning of each running Job that has fewer pods than it asks for."""
        if job is None:
            return {}
        said: dict[str, str] = {}
        for j in jobs:
            if j.suspended or j.deleting or j.failed or j.complete:
                continue
            want = job.spec.resources.nodes if j.component == names.TRAINER else 1
            if sum(p.owner_uid == j.uid for p in pods) < want:
                warnings = await self.kube.warnings(namespace, j.uid, "FailedCreate")
                if warnings:
                    said[j.name] = warnings[-1][1]
        return said

    async def with_log_tail(self, namespace: str, pod: PodView, memory: JobMemory) -> PodView:
        """A failed pod without a termination message gets its log tail instead (what FallbackToLogsOnError
        gives): the trainer's `error:` line and torchrun's root-cause exit code are in it."""
        if pod.phase != "Failed" or pod.message or not pod.failed_container:
            return pod
        if pod.name not in memory.logs:
            memory.logs[pod.name] = await self.kube.pod_log(namespace, pod.name, pod.failed_container)
        return dataclasses.replace(pod, message=memory.logs[pod.name])

    # --- progress -----------------------------------------------------------------------------------------

    async def read_progress(self, job: api.FineTuneJob, uid: str, memory: JobMemory, *,
                            force: bool) -> dict | None:  # fmt: skip
        """progress.json beside the job's checkpoints, read at most once per poll interval."""
        if not force and time.monotonic() - memory.progress_read < self.settings.poll_seconds:
            return memory.progress
        root = job.spec.checkpoint.storage or self.settings.default_storage
        if root is None:
            return None
        memory.progress_read = time.monotonic()
        layout_uid = None if status_model.legacy_layout(memory.status) else uid
        keys = ensemble_status.progress_keys(job, layout_uid)
        if keys:  # an ensemble: one record per member, the job's progress is the slowest member's
            read = await asyncio.to_thread(lambda: [self._read_progress(root, k, job) for k in keys])
            memory.members = [new or old for new, old in zip(read, memory.members or [None] * len(read), strict=True)]
            memory.progress = ensemble_status.slowest(memory.members) or memory.progress
            return memory.progress
        key = contract.progress_key(job.metadata.namespace, job.metadata.name, layout_uid)
        memory.progress = await asyncio.to_thread(self._read_progress, root, key, job) or memory.progress
        return memory.progress

    async def read_ensemble_metrics(self, job: api.FineTuneJob, uid: str, memory: JobMemory) -> None:
        """The combine step's ``ensemble/metrics.json``, until it has been read once."""
        root = job.spec.checkpoint.storage or self.settings.default_storage
        if root is None or memory.ensemble_metrics is not None:
            return
        key = ensemble_status.metrics_key(job, None if status_model.legacy_layout(memory.status) else uid)
        memory.ensemble_metrics = await asyncio.to_thread(self._read_json, root, key, job)

    def _read_json(self, root: str, key: str, job: api.FineTuneJob) -> dict | None:
        from finetune_trainer.storage import NotFoundError, StorageError

        try:
            raw = json.loads(self._storage(root, job).get_bytes(key))
        except NotFoundError:
            return None
        except (StorageError, ValueError) as e:
            log.warning("%s/%s: cannot read %s: %s", job.metadata.namespace, job.metadata.name, key, e)
            return None
        return raw if isinstance(raw, dict) else None

    def _read_progress(self, root: str, key: str, job: api.FineTuneJob) -> dict | None:
        """The progress record at ``key``, finite numbers only (finetune_trainer.contract)."""
        from finetune_trainer.storage import NotFoundError, StorageError

        try:
            raw = self._storage(root, job).get_bytes(key)
        except NotFoundError:
            return None
        except StorageError as e:
            log.warning("%s/%s: cannot read %s: %s", job.metadata.namespace, job.metadata.name, key, e)
            return None
        record = contract.ProgressRecord.from_json(raw)
        return record.to_dict() if record else None

    def _storage(self, root: str, job: api.FineTuneJob) -> Any:
        """One storage client per checkpoint root and endpoint, shared by every job under it (an S3 client
        is heavy), failing fast: a progress read is retried at the next poll anyway."""
        from finetune_trainer.storage import open_storage
        from finetune_trainer.storage_s3 import S3Config

        s3 = job.spec.checkpoint.s3 if root.startswith("s3://") else None
        overrides: dict[str, Any] = {}
        if s3 is not None and s3.endpoint:
            overrides["endpoint_url"] = s3.endpoint
        if s3 is not None and s3.region:
            overrides["region"] = s3.region
        cache_key = f"{root}|{sorted(overrides.items())}"
        if cache_key not in self._storages:
            config = None
            if root.startswith("s3://"):
                config = S3Config.from_env(
                    env=self.settings.s3_env, max_attempts=2, connect_timeout=2.0, read_timeout=5.0,
                    retry_deadline_s=5.0, **overrides,
                )  # fmt: skip
            self._storages[cache_key] = open_storage(root, config=config, check=False)
        return self._storages[cache_key]

    # --- deletion -----------------------------------------------------------------------------------------

    async def cleanup(self, namespace: str, name: str) -> int:
        """Delete every child of a job being deleted (ownerReferences would too, later); returns how many. Pods
        an older operator made itself are deleted too; the Jobs' own pods go with their Jobs."""
        selector = f"{names.JOB_LABEL}={name},{names.NAME_LABEL}={names.APP}"
        count = 0
        for plural in ("jobs", "pods", "configmaps", "services"):
            for child in await self.kube.list_names(namespace, plural, selector):
                count += await self.kube.delete(namespace, plural, child)
        self.generations.pop((namespace, name), None)
        return count


def _parse(meta: JobMeta, spec: dict) -> api.FineTuneJob | None:
    try:
        return api.parse_job({"metadata": {"name": meta.name, "namespace": meta.namespace}, "spec": spec})
    except ConfigError:
        return None
