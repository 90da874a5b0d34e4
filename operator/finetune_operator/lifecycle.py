"""The phase machine of a FineTuneJob, as one pure function: (spec, observed children, status, now) -> decision.

    Queued ◄─► Pending ─► Running ─► Exporting ─► Publishing ─► Succeeded
       ▲          │  ▲        │                                  (serving disabled: Running ─► Succeeded)
       │          │  │        ▼
       │          │  └── Restarting   (a failure or a disruption: a new attempt resumes from the checkpoint)
       │          ▼
       │       Suspended (spec.suspend)             Failed (bad input, backoff limit, deadline, publication)
       └── preempted by Kueue (Running ─► Queued): the same Job resumes from its checkpoint when readmitted

A *worker group* is one attempt: a ConfigMap and one batch/v1 Indexed Job of one pod per node, labelled with the
attempt number. The Job controller runs the pods and judges the group (its pod failure policy fails it at the
first failed pod); Kueue, when the job carries a queue name, admits or preempts the whole Job. When the current
group fails, it is replaced by the next attempt after an exponential backoff, until ``backoffLimit`` restarts are
spent; a disruption (eviction, drain, lost node) is replaced at once and not counted. Exit code 2 (bad data or
spec) is permanent: the job fails at once with the trainer's ``error:`` line. ``activeDeadlineSeconds`` counts
only admitted time (not Queued or Suspended). The caller (handlers -> reconcile) does all I/O: it observes Jobs,
pods, Kueue's Workloads and progress.json, asks Triton about the published model, and applies the decision.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from finetune_operator import api, ensemble_status, interruptions, names, resources
from finetune_operator import status as status_model
from finetune_operator.decision import Decision, Event, JobMeta
from finetune_operator.ensemble_steps import members
from finetune_operator.export_steps import ExportSteps
from finetune_operator.failures import Failure, classify, create_failure_reason, job_failure, primary
from finetune_operator.machine import ACTIVE
from finetune_operator.observed import JobView, Observed, PodView, Refusal
from finetune_operator.settings import Settings
from finetune_operator.status import (
    EXPORTING,
    FAILED,
    PENDING,
    PUBLISHING,
    QUEUED,
    RESTARTING,
    RUNNING,
    STALLED,
    SUCCEEDED,
    SUSPENDED,
    parse_time,
    timestamp,
)
from finetune_trainer import contract
from finetune_trainer.config import ConfigError

TRAINING = (QUEUED, PENDING, RUNNING, RESTARTING)
TERMINAL = (SUCCEEDED, FAILED)


class _Machine(ExportSteps):
    """One reconcile: the training phases and the dispatch of all of them."""

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
        self.force_stuck()
        if errors:
            if self.phase not in TERMINAL:
                self.stop(self.running_jobs())
                self.transition(FAILED, "InvalidSpec", "; ".join(errors), warning=True)
            return self.d
        if self.phase in TERMINAL:
            self.finished()
            return self.d
        if self.phase in ACTIVE and "activeSince" not in self.s:
            self.s["activeSince"] = self.s.get("startTime") or timestamp(self.now)  # started by an older operator
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
        if self.job.spec.active_deadline_seconds and "activeSince" in self.s and self.phase not in TERMINAL:
            self.wake_in(self.job.spec.active_deadline_seconds - self.active_seconds())
        return self.d

    def refused(self, refusal: Refusal) -> bool:
        """The API server would not create a child. A permanent refusal (the object is invalid) fails the job;
        any other is shown (reason, message, one Warning event) while the caller retries the create every
        RECREATE_AFTER seconds. True when the job failed."""
        if refusal.permanent:
            self.stop(self.running_jobs())
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
        self.new_attempt()
        self.created("Created")

    def created(self, reason: str) -> None:
        """The new attempt's group exists: queued for Kueue, or pending for the scheduler."""
        attempt = self.s["attempt"]
        if self.queue:
            self.transition(QUEUED, "Queued", f"worker group attempt {attempt} waits for Kueue to admit it "
                            f"(queue {self.queue})")  # fmt: skip
            return
        if reason == "Resumed":
            self.transition(PENDING, reason, f"resumed as attempt {attempt} from the latest checkpoint")
        else:
            self.transition(PENDING, reason, f"worker group attempt {attempt} created")

    def new_attempt(self) -> None:
        assert self.job is not None
        self.s["attempt"] = int(self.s.get("attempt") or 0) + 1
        self.s.pop("retryAfter", None)
        self.create_group()

    def create_group(self) -> None:
        assert self.job is not None
        self.d.create += resources.worker_group(self.job, self.meta.uid, self.s["attempt"], self.settings,
                                                legacy_layout=self.legacy_layout, job_labels=self.meta.labels,
                                                deadline=self.deadline_left())  # fmt: skip

    def suspend(self) -> None:
        self.stop(self.running_jobs(names.TRAINER))
        self.transition(SUSPENDED, "Suspended", "workers deleted; resume continues from the latest checkpoint")

    def suspended(self) -> None:
        assert self.job is not None
        if self.job.spec.suspend:
            self.stop(self.running_jobs(names.TRAINER))
            return
        if self.stopping(names.TRAINER, keep=[]):
            self.wake_in(1.0)  # the old workers are still stopping (writing their final checkpoint)
            return
        self.s.setdefault("startTime", timestamp(self.now))
        self.new_attempt()
        self.created("Resumed")

    def groups(self) -> int:
        assert self.job is not None
        return len(members(self.job)) or 1

    def training(self) -> None:
        assert self.job is not None
        attempt = int(self.s.get("attempt") or 1)
        group = [j for j in self.jobs(names.TRAINER) if j.attempt == attempt and not j.deleting]
        self.stop([j for j in self.running_jobs(names.TRAINER) if j.attempt != attempt])
        if parse_time(self.s.get("retryAfter")) is not None:
            # Restarting: wait for the old group to stop and the backoff to pass, then start the new attempt.
            if self.stopping(names.TRAINER, keep=[]):
                self.wake_in(1.0)
            elif not self.backing_off():
                self.create_group()
            return
        if self.stopping(names.TRAINER, keep=group):
            self.wake_in(1.0)  # an older group (or an older operator's pods) still stops: never two at once
            return
        if len(group) < self.groups():
            # Created but not observed yet, or deleted by someone: creating again is idempotent.
            self.create_group()
            return
        pods = self.pods_of(group)
        if any(j.suspended for j in group):
            self.queued(group)
            return
        failures = [f for p in pods if (f := classify(p))]
        failed = [j for j in group if j.failed]
        if failed or any(f.disruption for f in failures):
            if not any(p.phase == "Failed" or p.disrupted for p in pods):  # the pods are gone: the Job's word
                failures = [job_failure(j) for j in failed] + failures
            deadline = any(j.failed_reason == "DeadlineExceeded" for j in failed)
            if not deadline and self.settling(pods, failures):
                return
            self.worker_failed(group, failures, deadline=deadline)
            return
        if all(j.complete for j in group):
            self.training_done()
            return
        if self.phase == QUEUED:
            self.transition(PENDING, "Admitted", f"worker group attempt {attempt} admitted by Kueue; pods starting")
        if self.phase in (PENDING, RESTARTING):
            self.waiting(attempt, pods, group)
        live = [p for p in pods if p.phase in ("Running", "Succeeded") and not p.deleting]
        if len(live) >= self.groups() * self.job.spec.resources.nodes and self.phase != RUNNING:
            self.transition(RUNNING, "Running", f"{len(live)} worker pod(s) of attempt {attempt} running")
            self.s["lastProgressTime"] = timestamp(self.now)  # the clock of Stalled starts with the group
        self.check_stalled(len(live))

    def settling(self, pods: list[PodView], failures: list[Failure]) -> bool:
        """Whether to wait before judging a failed group: when a node is lost, the ranks on the other nodes lose
        their peer and fail at once, while the lost pods still show Running until the node lifecycle controller
        marks them (--node-monitor-grace-period, 50 s by default). Until every pod has finished, or is so marked,
        or node_loss_grace_seconds have passed since the first failure, the failure is not counted yet."""
        if any(f.permanent or f.disruption for f in failures):
            return False
        if not any(not p.finished and not p.node_lost for p in pods):
            return False
        ends = [t for p in pods if p.phase == "Failed" and (t := parse_time(p.finished_at)) is not None]
        if not ends:
            return False
        left = self.settings.node_loss_grace_seconds - (self.now - min(ends)).total_seconds()
        if left <= 0:
            return False
        self.wake_in(min(left, max(self.settings.poll_seconds, 1.0)))
        return True

    def check_stalled(self, live: int) -> None:
        """The Stalled condition: True while Running and the step counter has not moved for
        progressDeadlineSeconds (a hung collective, a stuck data source or upload); False once it moves again."""
        assert self.job is not None
        limit = self.job.spec.progress_deadline_seconds
        since = parse_time(self.s.get("lastProgressTime"))
        stalled = self.stalled()
        if self.phase != RUNNING or limit is None or since is None:
            if stalled:
                self.set_stalled(False, "NotRunning", "")
            return
        idle = (self.now - since).total_seconds()
        if idle < limit:
            if stalled:
                self.set_stalled(False, "Progressing", "the step counter moves again")
            self.wake_in(limit - idle)
            return
        if not stalled:
            step = (self.s.get("progress") or {}).get("step", 0)
            self.set_stalled(True, "NoProgress", f"step {step} has not moved for {idle:.0f}s while {live} worker "
                             f"pod(s) run (progressDeadlineSeconds {limit}): see the workers' logs")  # fmt: skip

    def stalled(self) -> bool:
        return any(c.get("type") == STALLED and c.get("status") == "True" for c in self.s.get("conditions") or [])

    def set_stalled(self, value: bool, reason: str, message: str) -> None:
        status_model.set_condition(self.s, STALLED, value, reason, message, timestamp(self.now), self.meta.generation)
        if value:
            self.d.events.append(Event("Warning", "Stalled", message))
        elif reason == "Progressing":
            self.d.events.append(Event("Normal", "Progressing", message))

    def queued(self, group: list[JobView]) -> None:
        """A suspended group: Kueue has not admitted it yet, or took its quota back (preemption). Its pods stop
        with a final checkpoint; the same Job resumes from it when Kueue admits it again."""
        job = next(j for j in group if j.suspended)
        said = self.observed.admissions.get(job.name)
        if said is None:
            reason, message = "Queued", f"job {job.name} waits for Kueue to admit it (queue {self.queue})"
        else:
            reason, message = said.reason or "Queued", f"job {job.name}: {said.message or said.reason}"
        if said is not None and said.evicted:  # (the Job may have been seen suspended before Kueue said why)
            message += "; its workers stop after a final checkpoint and it resumes from it when admitted again"
        self.transition(QUEUED, reason, message, warning=said is not None and said.evicted)
        self.s["message"] = message  # Kueue's message changes (the quota it lacks); the event is kept once

    def waiting(self, attempt: int, workers: list[PodView], group: list[JobView]) -> None:
        """Say why the group's pods wait, as the cluster reports it (a pod the API server refused the Job
        controller, Unschedulable, ImagePullBackOff, ...); a pending job goes back to ``Created`` once nothing
        does."""
        refused = next(((j, m) for j in group if (m := self.observed.create_failures.get(j.name))), None)
        stuck = next((p for p in workers if p.waiting), None)
        if refused is not None:
            j, said = refused
            message = f"job {j.name} cannot create its pods: {said}"
            self.transition(self.phase, create_failure_reason(said), message, warning=True)
            self.s["message"] = message
        elif stuck is not None:
            message = f"pod {stuck.name}: {stuck.waiting_message or stuck.waiting}"
            self.transition(self.phase, stuck.waiting, message, warning=True)
            self.s["message"] = message  # the scheduler's count of fitting nodes changes; the event is kept once
        elif self.phase == PENDING and self.observed.refused is None and self.s.get("reason") not in (
            "Created", "Resumed", "Admitted"
        ):  # fmt: skip
            self.transition(PENDING, "Created", f"worker group attempt {attempt} created")

    def worker_failed(self, group: list[JobView], failures: list[Failure], *, deadline: bool = False) -> None:
        assert self.job is not None
        self.stop([j for j in group if not j.failed])
        permanent = [f for f in failures if f.permanent]
        if permanent:
            self.stop(self.running_jobs())
            self.transition(FAILED, permanent[0].reason, permanent[0].message, warning=True)
            return
        if deadline:
            self.transition(FAILED, "DeadlineExceeded", f"activeDeadlineSeconds "
                            f"{self.job.spec.active_deadline_seconds} passed", warning=True)  # fmt: skip
            return
        attempt = int(self.s.get("attempt") or 1) + 1
        disruption = next((f for f in failures if f.disruption), None)
        if disruption is not None:
            # Not the job's failure: no backoff, backoffLimit untouched.
            self.s["disruptions"] = int(self.s.get("disruptions") or 0) + 1
            self.d.steps_redone += interruptions.record(self.s, attempt - 1, disruption.reason, timestamp(self.now))
            self.s["attempt"] = attempt
            self.s["retryAfter"] = timestamp(self.now)
            self.d.restarted = self.d.disrupted = True
            self.wake_in(0.05)
            self.transition(RESTARTING, disruption.reason, f"{disruption.message}; restarting as attempt {attempt} "
                            "from the latest checkpoint (a disruption: backoffLimit is not spent)",
                            warning=True)  # fmt: skip
            return
        first = primary(failures)
        restarts = int(self.s.get("restarts") or 0)
        if restarts >= self.job.spec.backoff_limit:
            message = f"{first.message}; backoffLimit {self.job.spec.backoff_limit} restarts spent"
            self.transition(FAILED, "BackoffLimitExceeded", message, warning=True, cause=first.reason)
            return
        delay = self.settings.backoff(restarts)
        self.d.steps_redone += interruptions.record(self.s, attempt - 1, first.reason, timestamp(self.now))
        self.s["restarts"] = restarts + 1
        self.s["attempt"] = attempt
        self.s["retryAfter"] = timestamp(self.now + timedelta(seconds=delay))
        self.d.restarted = True
        self.wake_in(delay)
        message = f"{first.message}; restart {restarts + 1}/{self.job.spec.backoff_limit} as attempt " \
                  f"{self.s['attempt']} in {delay:g}s from the latest checkpoint"  # fmt: skip
        self.transition(RESTARTING, first.reason, message, warning=True)

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
        self.export_job(1)
        self.transition(EXPORTING, "Exporting", "training complete; exporting the model")

    def finished(self) -> None:
        """Terminal: stop what still runs; after ttlSecondsAfterFinished delete the Jobs (the Job controller's
        TTL does too) and config maps."""
        assert self.job is not None
        if self.phase == FAILED:
            self.stop(self.running_jobs())
        ttl = self.job.spec.ttl_seconds_after_finished
        done = parse_time(self.s.get("completionTime"))
        if ttl is None or done is None:
            return
        expiry = done + timedelta(seconds=ttl)
        if self.now < expiry:
            self.wake_in((expiry - self.now).total_seconds())
            return
        jobs = [j for j in self.observed.jobs if not j.deleting]
        self.stop(jobs)
        if jobs:
            groups = {(j.attempt, j.member) for j in jobs if j.component == names.TRAINER}
            self.d.delete += [("configmaps", names.config_name(self.meta.name, a, m))
                              for a, m in sorted(groups, key=lambda g: (g[0], g[1] or 0))]  # fmt: skip
            self.d.events.append(Event("Normal", "Cleanup", f"deleted {len(jobs)} finished Job(s) after {ttl}s"))

    def deadline_passed(self) -> bool:
        """activeDeadlineSeconds counts admitted time only (``activeSeconds`` + since ``activeSince``)."""
        assert self.job is not None
        limit = self.job.spec.active_deadline_seconds
        if limit is None or self.phase in (SUSPENDED, QUEUED) or "activeSince" not in self.s:
            return False
        left = limit - self.active_seconds()
        if left > 0:
            self.wake_in(left)
            return False
        self.stop(self.running_jobs())
        self.transition(FAILED, "DeadlineExceeded", f"activeDeadlineSeconds {limit} passed (admitted time)",
                        warning=True)  # fmt: skip
        return True

    def read_progress(self) -> None:
        record = contract.ProgressRecord.from_dict(self.observed.progress)
        if record is None or self.phase not in TRAINING:
            return
        self.d.steps_redone += interruptions.read(self.s, record, self.now)
        progress, metrics = status_model.progress_fields(record)
        if progress.get("step") != (self.s.get("progress") or {}).get("step") or progress.get("stage") != (
            self.s.get("progress") or {}
        ).get("stage"):  # fmt: skip
            self.s["lastProgressTime"] = timestamp(self.now)
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
