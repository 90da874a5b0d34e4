"""The phase machine of a FineTuneJob, as one pure function: (spec, observed children, status, now) -> decision.

    Pending ─► Running ─► Exporting ─► Publishing ─► Succeeded
       │  ▲        │                                  (serving disabled: Running ─► Succeeded)
       │  │        ▼
       │  └── Restarting   (a worker failed for a retryable reason: a new attempt resumes from the checkpoint)
       ▼
    Suspended (spec.suspend)             Failed (bad input, backoff limit, deadline, publication)

A *worker group* is one attempt: a ConfigMap and one pod per node, all labelled with the attempt number. When
any worker of the current attempt fails, the whole group is replaced by the next attempt after an exponential
backoff, until ``backoffLimit`` restarts are spent. Exit code 2 (bad data or spec) is permanent: the job fails
at once with the trainer's ``error:`` line. The caller (handlers -> reconcile) does all I/O: it observes pods
and progress.json, asks Triton about the published model, and applies the decision.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

from finetune_operator import api, ensemble_status, names, resources
from finetune_operator import status as status_model
from finetune_operator.decision import Decision, Event, JobMeta
from finetune_operator.observed import Failure, Observed, PodView, Refusal, classify
from finetune_operator.settings import Settings
from finetune_operator.status import (
    EXPORTING,
    FAILED,
    PENDING,
    PUBLISHING,
    RESTARTING,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    parse_time,
    timestamp,
)
from finetune_trainer import contract
from finetune_trainer.config import ConfigError

TRAINING = (PENDING, RUNNING, RESTARTING)
# A pod still terminating this long after its grace period ended is on a node that no longer answers.
FORCE_DELETE_AFTER = timedelta(seconds=60)
TERMINAL = (SUCCEEDED, FAILED)



class _Machine:
    """One reconcile: mutates a copy of the status and collects actions into a Decision."""

    def __init__(self, meta: JobMeta, status: dict, observed: Observed, now: datetime, settings: Settings):
        self.meta, self.observed, self.now, self.settings = meta, observed, now, settings
        self.d = Decision(status=copy.deepcopy(status or {}))
        self.s = self.d.status
        self.job: api.FineTuneJob | None = None
        self.legacy_layout = status_model.legacy_layout(status)

    # -- small actions --

    @property
    def phase(self) -> str:
        return self.s.get("phase") or ""

    def transition(self, phase: str, reason: str, message: str, warning: bool = False) -> None:
        if phase == self.phase and self.s.get("reason") == reason:
            return
        status_model.set_phase(self.s, phase, reason, message, timestamp(self.now), self.meta.generation)
        self.d.events.append(Event("Warning" if warning else "Normal", reason, message))

    def wake_in(self, seconds: float) -> None:
        seconds = max(seconds, 0.05)
        self.d.requeue = seconds if self.d.requeue is None else min(self.d.requeue, seconds)

    def delete_pods(self, pods: list[PodView]) -> None:
        for p in pods:
            if not p.deleting:
                self.d.delete.append(("pods", p.name))
            elif (ends := parse_time(p.deletion_time)) is not None and self.now > ends + FORCE_DELETE_AFTER:
                # Past its grace period and still there: no kubelet is left to confirm it (a lost node).
                # Removing it lets the next attempt start; its processes, if any still run, cannot commit
                # over the new attempt's checkpoints (each attempt commits its own, verified by manifest).
                self.d.force_delete.append(p.name)
                self.d.events.append(Event("Warning", "ForceDeleted", f"pod {p.name} was still terminating "
                                           f"{FORCE_DELETE_AFTER.seconds}s after its grace period (its node "
                                           "does not answer): deleted with grace 0"))  # fmt: skip

    def pods(self, component: str) -> list[PodView]:
        return [p for p in self.observed.pods if p.component == component]

    def active(self, component: str) -> list[PodView]:
        return [p for p in self.pods(component) if not p.finished]

    # -- the machine --

    def run(self, spec: Any) -> Decision:
        self.s["observedGeneration"] = self.meta.generation
        try:
            self.job = api.parse_job(
                {"metadata": {"name": self.meta.name, "namespace": self.meta.namespace}, "spec": spec}
            )
        except ConfigError as e:
            errors = e.errors
        else:
            errors = resources.spec_errors(self.job, self.settings)
        if errors:
            if self.phase not in TERMINAL:
                self.delete_pods(self.active(names.TRAINER) + self.active(names.EXPORTER))
                self.transition(FAILED, "InvalidSpec", "; ".join(errors), warning=True)
            return self.d
        if self.phase in TERMINAL:
            self.finished()
            return self.d
        if self.deadline_passed():
            return self.d
        self.read_progress()
        self.read_ensemble()
        if self.observed.refused is not None and self.refused(self.observed.refused):
            return self.d
        phase = self.phase
        if phase == "":
            self.start()
        elif phase == SUSPENDED:
            self.suspended()
        elif phase in TRAINING:
            if self.job.spec.suspend:
                self.suspend()
            else:
                self.training()
        elif phase in (EXPORTING, PUBLISHING):
            self.publishing()
        return self.d

    def refused(self, refusal: Refusal) -> bool:
        """The API server would not create a child. A permanent refusal (the object is invalid) fails the job;
        any other is shown (reason, message, one Warning event) while the caller retries the create every
        RECREATE_AFTER seconds. True when the job failed."""
        if refusal.permanent:
            self.delete_pods(self.active(names.TRAINER) + self.active(names.EXPORTER))
            self.transition(FAILED, refusal.reason, refusal.describe(), warning=True)
            return True
        self.transition(self.phase or PENDING, refusal.reason, refusal.describe(), warning=True)
        return False

    def start(self) -> None:
        assert self.job is not None
        self.s["storage"] = resources.job_storage(self.job, self.settings, self.meta.uid)
        self.s.setdefault("restarts", 0)
        self.s["attempt"] = 0
        if self.job.spec.suspend:
            self.transition(SUSPENDED, "Suspended", "created suspended; set spec.suspend=false to start")
            return
        self.s["startTime"] = timestamp(self.now)
        if self.job.spec.active_deadline_seconds:
            self.wake_in(self.job.spec.active_deadline_seconds)
        self.new_attempt()
        self.transition(PENDING, "Created", f"worker group attempt {self.s['attempt']} created")

    def new_attempt(self) -> None:
        assert self.job is not None
        self.s["attempt"] = int(self.s.get("attempt") or 0) + 1
        self.s.pop("retryAfter", None)
        self.create_group()

    def create_group(self) -> None:
        assert self.job is not None
        self.d.create += resources.worker_group(self.job, self.meta.uid, self.s["attempt"], self.settings,
                                                legacy_layout=self.legacy_layout)  # fmt: skip

    def suspend(self) -> None:
        self.delete_pods(self.active(names.TRAINER))
        self.transition(SUSPENDED, "Suspended", "workers deleted; resume continues from the latest checkpoint")

    def suspended(self) -> None:
        assert self.job is not None
        if self.job.spec.suspend:
            self.delete_pods(self.active(names.TRAINER))
            return
        if self.active(names.TRAINER):
            self.wake_in(1.0)  # the old workers are still stopping (writing their final checkpoint)
            return
        self.s.setdefault("startTime", timestamp(self.now))
        self.new_attempt()
        self.transition(PENDING, "Resumed", f"resumed as attempt {self.s['attempt']} from the latest checkpoint")

    def training(self) -> None:
        assert self.job is not None
        attempt = int(self.s.get("attempt") or 1)
        slots = names.worker_slots(self.job)  # (member, rank): one worker group per ensemble member
        workers = [p for p in self.pods(names.TRAINER) if p.attempt == attempt]
        stale = [p for p in self.active(names.TRAINER) if p.attempt != attempt]
        self.delete_pods(stale)
        retry_after = parse_time(self.s.get("retryAfter"))
        if retry_after is not None:
            # Restarting: wait for the old group to stop and the backoff to pass, then start the new attempt.
            if stale:
                self.wake_in(1.0)
                return
            if not self.backing_off():
                self.create_group()
            return
        failures = [(p, f) for p in workers if (f := classify(p))]
        if self.phase == RUNNING:
            seen = {(p.member, p.rank) for p in workers}
            failures += [
                (None, Failure(False, "PodDeleted", f"pod {names.worker_name(self.meta.name, attempt, r, m)} "
                               "disappeared"))
                for m, r in slots if (m, r) not in seen
            ]  # fmt: skip
        if failures:
            self.worker_failed(workers, [f for _, f in failures])
            return
        by_rank = {(p.member, p.rank): p for p in workers}
        if len(by_rank) < len(slots):
            # Created but not observed yet, or lost before it ever ran: creating again is idempotent.
            self.create_group()
            return
        if self.phase in (PENDING, RESTARTING):
            self.waiting(attempt, list(by_rank.values()))
        if all(p.phase == "Succeeded" for p in by_rank.values()):
            self.training_done()
        elif all(p.phase in ("Running", "Succeeded") for p in by_rank.values()) and self.phase != RUNNING:
            self.transition(RUNNING, "Running", f"{len(slots)} worker pod(s) of attempt {attempt} running")

    def waiting(self, attempt: int, workers: list[PodView]) -> None:
        """Say why the group's pods wait, as the cluster reports it (Unschedulable, ImagePullBackOff, ...);
        a pending job goes back to ``Created`` once nothing does."""
        stuck = next((p for p in workers if p.waiting), None)
        if stuck is not None:
            message = f"pod {stuck.name}: {stuck.waiting_message or stuck.waiting}"
            self.transition(self.phase, stuck.waiting, message, warning=True)
            self.s["message"] = message  # the scheduler's count of fitting nodes changes; the event is kept once
        elif self.phase == PENDING and self.observed.refused is None and self.s.get("reason") not in (
            "Created", "Resumed"
        ):  # fmt: skip
            self.transition(PENDING, "Created", f"worker group attempt {attempt} created")

    def worker_failed(self, workers: list[PodView], failures: list[Failure]) -> None:
        assert self.job is not None
        permanent = [f for f in failures if f.permanent]
        self.delete_pods([p for p in workers if not p.finished])
        if permanent:
            self.transition(FAILED, permanent[0].reason, permanent[0].message, warning=True)
            return
        first = failures[0]
        restarts = int(self.s.get("restarts") or 0)
        if restarts >= self.job.spec.backoff_limit:
            message = f"{first.message}; backoffLimit {self.job.spec.backoff_limit} restarts spent"
            self.transition(FAILED, "BackoffLimitExceeded", message, warning=True)
            return
        delay = self.settings.backoff(restarts)
        self.s["restarts"] = restarts + 1
        self.s["attempt"] = int(self.s.get("attempt") or 1) + 1
        self.s["retryAfter"] = timestamp(self.now + timedelta(seconds=delay))
        self.d.restarted = True
        self.wake_in(delay)
        message = f"{first.message}; restart {restarts + 1}/{self.job.spec.backoff_limit} as attempt " \
                  f"{self.s['attempt']} in {delay:g}s from the latest checkpoint"  # fmt: skip
        self.transition(RESTARTING, first.reason, message, warning=True)

    def backing_off(self) -> bool:
        """Whether ``status.retryAfter`` (a worker group's or an export's backoff) is still ahead; once it has
        passed it is cleared, and the caller starts the next try."""
        retry_after = parse_time(self.s.get("retryAfter"))
        if retry_after is not None and self.now < retry_after:
            self.wake_in((retry_after - self.now).total_seconds())
            return True
        self.s.pop("retryAfter", None)
        return False

    def training_done(self) -> None:
        assert self.job is not None
        progress = self.s.get("progress") or {}
        if progress.get("totalSteps"):
            progress.update(step=progress["totalSteps"], percent=100.0, etaSeconds=0)
        if not self.job.spec.serving.enabled:
            self.transition(SUCCEEDED, "TrainingComplete", "training complete; serving is disabled")
            return
        self.s["exportAttempt"] = 1
        self.s["exportStartTime"] = timestamp(self.now)
        self.export_pod(1)
        self.transition(EXPORTING, "Exporting", "training complete; exporting the model")

    def publishing(self) -> None:
        assert self.job is not None
        n = int(self.s.get("exportAttempt") or 1)
        pod = next((p for p in self.pods(names.EXPORTER) if p.export == n), None)
        if pod is None:
            if not self.backing_off():
                self.export_pod(n)
            return
        if pod.phase == "Failed" or pod.deleting:
            self.export_failed(pod, n)
            return
        if pod.phase != "Succeeded":
            if "publish" in pod.running and self.phase == EXPORTING:
                self.transition(PUBLISHING, "Publishing", "model exported; publishing to the model repository")
            return
        if self.phase == EXPORTING:
            self.transition(PUBLISHING, "Publishing", "model published; waiting for Triton to serve it")
        self.confirm()

    def export_pod(self, n: int) -> None:
        assert self.job is not None
        pod = resources.export_pod(self.job, self.meta.uid, n, self.settings, legacy_layout=self.legacy_layout)
        self.d.create.append(pod)

    def export_failed(self, pod: PodView, n: int) -> None:
        assert self.job is not None
        failure = classify(pod) or Failure(False, "ExportFailed", f"pod {pod.name} failed")
        self.d.publish_failed = True
        if failure.permanent or n > self.job.spec.backoff_limit:
            self.transition(FAILED, "PublishFailed", failure.message, warning=True)
            return
        # Back off as worker groups do, so that a Triton or repository outage of a minute does not spend every try.
        delay = self.settings.backoff(n - 1)
        self.s["exportAttempt"] = n + 1
        self.s["retryAfter"] = timestamp(self.now + timedelta(seconds=delay))
        self.wake_in(delay)
        self.d.events.append(Event("Warning", "ExportRetry", f"{failure.message}; retrying as export {n + 1} in "
                                   f"{delay:g}s"))  # fmt: skip

    def confirm(self) -> None:
        assert self.job is not None
        served = self.observed.served
        started = parse_time(self.s.get("exportStartTime")) or self.now
        if served is not None and served.ready:
            serving = self.job.spec.serving
            self.s["model"] = {
                "repository": serving.repository,
                "name": served.name,
                "version": served.version,
                "endpoint": served.endpoint,
                "ready": True,
            }
            self.d.published_seconds = (self.now - started).total_seconds()
            self.transition(SUCCEEDED, "ModelReady", f"model {served.name} version {served.version} is served "
                            f"at {served.endpoint}")  # fmt: skip
            return
        waited = (self.now - started).total_seconds()
        if waited >= self.settings.publish_timeout_seconds:
            self.d.publish_failed = True
            why = served.message if served else "no answer from Triton"
            self.transition(FAILED, "PublishFailed", f"model not served after {waited:.0f}s: {why}", warning=True)
            return
        self.wake_in(min(2.0, self.settings.poll_seconds))

    def finished(self) -> None:
        """Terminal: stop what still runs; after ttlSecondsAfterFinished delete the pods and config maps."""
        assert self.job is not None
        if self.phase == FAILED:
            self.delete_pods(self.active(names.TRAINER) + self.active(names.EXPORTER))
        ttl = self.job.spec.ttl_seconds_after_finished
        done = parse_time(self.s.get("completionTime"))
        if ttl is None or done is None:
            return
        expiry = done + timedelta(seconds=ttl)
        if self.now < expiry:
            self.wake_in((expiry - self.now).total_seconds())
            return
        pods = self.pods(names.TRAINER) + self.pods(names.EXPORTER)
        self.delete_pods(pods)
        if pods:
            groups = {(p.attempt, p.member) for p in pods if p.component == names.TRAINER}
            self.d.delete += [("configmaps", names.config_name(self.meta.name, a, m))
                              for a, m in sorted(groups, key=lambda g: (g[0], g[1] or 0))]  # fmt: skip
            self.d.events.append(Event("Normal", "Cleanup", f"deleted {len(pods)} finished pod(s) after {ttl}s"))

    def deadline_passed(self) -> bool:
        assert self.job is not None
        limit = self.job.spec.active_deadline_seconds
        started = parse_time(self.s.get("startTime"))
        if limit is None or started is None or self.phase == SUSPENDED:
            return False
        left = (started + timedelta(seconds=limit) - self.now).total_seconds()
        if left > 0:
            self.wake_in(left)
            return False
        self.delete_pods(self.active(names.TRAINER) + self.active(names.EXPORTER))
        self.transition(FAILED, "DeadlineExceeded", f"activeDeadlineSeconds {limit} passed", warning=True)
        return True

    def read_progress(self) -> None:
        record = contract.ProgressRecord.from_dict(self.observed.progress)
        if record is None or self.phase not in TRAINING:
            return
        progress, metrics = status_model.progress_fields(record)
        self.s["progress"] = progress
        self.s["metrics"] = {**(self.s.get("metrics") or {}), **metrics}


    def read_ensemble(self) -> None:
        """``status.ensemble``; once combined, ``status.metrics`` shows the served ensemble's validation metrics."""
        if self.job is None or self.job.spec.ensemble is None:
            return
        combined = self.observed.ensemble_metrics
        self.s["ensemble"] = ensemble_status.summary(self.job, self.observed.members or [], combined,
                                                     self.s.get("ensemble"))  # fmt: skip
        if combined:
            validation = ensemble_status.flat_metrics({"validation": combined.get("validation")})
            self.s["metrics"] = {**(self.s.get("metrics") or {}),
                                 **{k.removeprefix("validation_"): v for k, v in validation.items()}}  # fmt: skip


def reconcile(meta: JobMeta, spec: Any, status: dict | None, observed: Observed, now: datetime,
              settings: Settings) -> Decision:  # fmt: skip
    """The next step of one job: given its spec, its last status and what is observed now, what to do.

    Pure: no API calls, no clock (``now`` is given), no randomness. Children it creates are rendered by
    resources.py; creating one that exists already is harmless (the caller ignores 409 Conflict). The new
    status is checked by the typed status model (status.py): what it returns is what the CRD's schema holds.
    """
    decision = _Machine(meta, status_model.read(status), observed, now, settings).run(spec)
    decision.status = status_model.checked(decision.status)
    return decision
