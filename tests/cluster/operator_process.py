"""The real operator as a process out of cluster (`python -m finetune_operator --namespace NS`), for the tests
that run it with a kubeconfig of their choosing (a ServiceAccount's, several replicas) instead of from the chart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.fixtures.kube import KubeApi, eventually


class Operator:
    """The real operator as a subprocess: `python -m finetune_operator --namespace NS`; start/kill/stop by pid."""

    def __init__(self, kube: KubeApi, log_dir: Path, env: dict[str, str]):
        self.kube, self.log_dir, self.env = kube, log_dir, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.metrics_port = int(env["FINETUNE_METRICS_PORT"])

    @property
    def log(self) -> Path:
        return self.log_dir / f"operator-{self.runs}.log"

    def start(self) -> Operator:
        self.runs += 1
        cmd = [sys.executable, "-m", "finetune_operator", f"--namespace={self.kube.namespace}", "--verbose"]
        env = {**os.environ, "KUBECONFIG": str(self.kube.kubeconfig), **self.env}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        eventually(
            lambda: self.proc.poll() is not None or b"Starting the watch-stream" in self.log.read_bytes(),
            timeout=60, interval=0.1, what="operator watching",
        )  # fmt: skip
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies under the operator."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def logs(self) -> str:
        return "\n".join(
            f"--- operator run {i} ---\n" + (self.log_dir / f"operator-{i}.log").read_text()[-6000:]
            for i in range(1, self.runs + 1)
        )

    def scrape(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()
