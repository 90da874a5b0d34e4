"""The working state of one reconcile (machine.py's ``Machine``): the status being rewritten, the decision
being collected, and the small actions every phase uses (a transition with its condition, event and advice,
waking again, stopping Jobs, the clock of activeDeadlineSeconds). The phases are export_steps.py's and
lifecycle.py's, which build on it."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta

from finetune_operator import api, names
from finetune_operator import status as status_model
from finetune_operator.decision import Decision, Event, JobMeta
from finetune_operator.failures import advice
from finetune_operator.observed import JobView, Observed, PodView
from finetune_operator.settings import Settings
from finetune_operator.status import EXPORTING, PENDING, PUBLISHING, RESTARTING, RUNNING, parse_time, timestamp

# The phases activeDeadlineSeconds counts: admitted, running or between attempts (not Queued or Suspended).
ACTIVE = (PENDING, RUNNING, RESTARTING, EXPORTING, PUBLISHING)
# A pod still terminating this long after its grace period ended is on a node that no longer answers.
FORCE_DELETE_AFTER = timedelta(seconds=60)


class Machine:
    """One reconcile: mutates a copy of the status and collects actions into a Decision."""

    def __init__(self, meta: JobMeta, status: dict, observed: Observed, now: datetime, settings: Settings):
        self.meta, self.observed, self.now, self.settings = meta, observed, now, settings
        self.d = Decision(status=copy.deepcopy(status or {}))
        self.s = self.d.status
        self.job: api.FineTuneJob | None = None
        self.legacy_layout = status_model.legacy_layout(status)


    @property
    def phase(self) -> str:
        return self.s.get("phase") or ""


    def transition(self, phase: str, reason: str, message: str, warning: bool = False,
                   cause: str | None = None) -> None:  # fmt: skip
        """Enter ``phase`` for ``reason``; ``status.advice`` says what to do about it (or about ``cause``, the
        failure behind a reason such as BackoffLimitExceeded), and so does a Warning event."""
        if phase == self.phase and self.s.get("reason") == reason:
            return
        self.count_active(phase in ACTIVE)
        status_model.set_phase(self.s, phase, reason, message, timestamp(self.now), self.meta.generation)
        hint = advice(cause or reason)
        if hint:
            self.s["advice"] = hint
        else:
            self.s.pop("advice", None)
        said = f"{message}. What to do: {hint}" if hint and warning else message
        self.d.events.append(Event("Warning" if warning else "Normal", reason, said))


    def count_active(self, active: bool) -> None:
        """Start or stop the clock of activeDeadlineSeconds: ``activeSince`` while admitted; the time spent is
        added to ``activeSeconds`` when the job leaves (queued, suspended, finished)."""
        since = parse_time(self.s.get("activeSince"))
        if active and since is None:
            self.s["activeSince"] = timestamp(self.now)
        elif not active and since is not None:
            spent = float(self.s.get("activeSeconds") or 0) + max((self.now - since).total_seconds(), 0.0)
            self.s["activeSeconds"] = round(spent, 3)
            self.s.pop("activeSince", None)


    def active_seconds(self) -> float:
        since = parse_time(self.s.get("activeSince"))
        running = (self.now - since).total_seconds() if since is not None else 0.0
        return float(self.s.get("activeSeconds") or 0) + max(running, 0.0)


    def wake_in(self, seconds: float) -> None:
        seconds = max(seconds, 0.05)
        self.d.requeue = seconds if self.d.requeue is None else min(self.d.requeue, seconds)


    def stop(self, jobs: list[JobView]) -> None:
        """Delete Jobs (their pods get their grace period: the trainer writes a final checkpoint on SIGTERM;
        the caller deletes in the foreground, so a Job stays visible until its pods are gone)."""
        for j in jobs:
            if not j.deleting and ("jobs", j.name) not in self.d.delete:
                self.d.delete.append(("jobs", j.name))
        for p in self.legacy_pods():
            if not p.finished and not p.deleting:
                self.d.delete.append(("pods", p.name))


    def force_stuck(self) -> None:
        """Pods past their grace period and still there: no kubelet is left to confirm them (a lost node).
        Removing one lets the next attempt start; its processes, if any still run, cannot commit over the new
        attempt's checkpoints (each attempt commits its own, verified by manifest)."""
        for p in self.observed.pods:
            ends = parse_time(p.deletion_time) if p.deleting else None
            if ends is not None and self.now > ends + FORCE_DELETE_AFTER:
                self.d.force_delete.append(p.name)
                self.d.events.append(Event("Warning", "ForceDeleted", f"pod {p.name} was still terminating "
                                           f"{FORCE_DELETE_AFTER.seconds}s after its grace period (its node "
                                           "does not answer): deleted with grace 0"))  # fmt: skip


    def jobs(self, component: str) -> list[JobView]:
        return [j for j in self.observed.jobs if j.component == component]


    def running_jobs(self, component: str | None = None) -> list[JobView]:
        """Jobs the Job controller has not finished (their pods may run)."""
        return [j for j in self.observed.jobs if (component is None or j.component == component)
                and not j.complete and not j.failed]  # fmt: skip


    def pods_of(self, jobs: list[JobView]) -> list[PodView]:
        uids = {j.uid for j in jobs}
        return [p for p in self.observed.pods if p.owner_uid in uids]


    def legacy_pods(self) -> list[PodView]:
        """Worker or export pods an operator from before worker Jobs created (owned by the FineTuneJob)."""
        return [p for p in self.observed.pods if p.owner_uid == self.meta.uid]


    def stopping(self, component: str, keep: list[JobView]) -> bool:
        """Whether pods of ``component`` outside ``keep`` still run (an old group writing its last checkpoint)."""
        uids = {j.uid for j in keep}
        return any(p.component == component and not p.finished and p.owner_uid not in uids
                   for p in self.observed.pods)  # fmt: skip


    @property
    def queue(self) -> str | None:
        return self.meta.labels.get(names.QUEUE_LABEL)


    def backing_off(self) -> bool:
        """Whether ``status.retryAfter`` (a worker group's or an export's backoff) is still ahead; once it has
        passed it is cleared, and the caller starts the next try."""
        retry_after = parse_time(self.s.get("retryAfter"))
        if retry_after is not None and self.now < retry_after:
            self.wake_in((retry_after - self.now).total_seconds())
            return True
        self.s.pop("retryAfter", None)
        return False


    def deadline_left(self) -> int | None:
        limit = self.job.spec.active_deadline_seconds if self.job else None
        return None if limit is None else max(int(limit - self.active_seconds()), 1)

