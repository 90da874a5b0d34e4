"""The Exporting and Publishing phases: one export Job per try (export, then publication into the model
repository), retried with the workers' backoff up to ``backoffLimit``, then Triton's word that the new version
is served."""

from __future__ import annotations

from datetime import timedelta

from finetune_operator import names, resources
from finetune_operator.decision import Event
from finetune_operator.failures import classify, job_failure
from finetune_operator.machine import Machine
from finetune_operator.observed import JobView, PodView
from finetune_operator.status import EXPORTING, FAILED, PUBLISHING, SUCCEEDED, parse_time, timestamp


class ExportSteps(Machine):
    """The phases after training, on top of the machine's small actions."""

    def publishing(self) -> None:
        assert self.job is not None
        n = int(self.s.get("exportAttempt") or 1)
        job = next((j for j in self.jobs(names.EXPORTER) if j.export == n), None)
        if job is None:
            if not self.backing_off():
                self.export_job(n)
            return
        pod = next((p for p in self.pods_of([job]) if p.export == n), None)
        if job.suspended and pod is None:
            said = self.observed.admissions.get(job.name)
            message = f"job {job.name}: {said.message or said.reason}" if said else \
                f"job {job.name} waits for Kueue to admit it (queue {self.queue})"  # fmt: skip
            self.transition(self.phase, said.reason if said else "Queued", message)
            self.s["message"] = message
            return
        if job.failed or (pod is not None and pod.phase == "Failed"):
            self.export_failed(job, pod, n)
            return
        if pod is None or pod.phase != "Succeeded":
            if pod is not None and "publish" in pod.running and self.phase == EXPORTING:
                self.transition(PUBLISHING, "Publishing", "model exported; publishing to the model repository")
            return
        if self.phase == EXPORTING:
            self.transition(PUBLISHING, "Publishing", "model published; waiting for Triton to serve it")
        self.confirm()


    def export_job(self, n: int) -> None:
        assert self.job is not None
        self.d.create.append(resources.export_job(self.job, self.meta.uid, n, self.settings,
                                                  legacy_layout=self.legacy_layout, job_labels=self.meta.labels))


    def export_failed(self, job: JobView, pod: PodView | None, n: int) -> None:
        assert self.job is not None
        failure = (classify(pod) if pod is not None else None) or job_failure(job, "ExportFailed")
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

