"""What `finetune serve` installs once into the per-user cache is readable by a server run as another user."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from finetune_operator import serve_local


def test_a_cached_install_is_readable_by_everyone(tmp_path: Path, monkeypatch) -> None:
    def fake_pip(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        target = Path(cmd[cmd.index("--target") + 1])
        (target / "numpy").mkdir()
        (target / "numpy" / "__init__.py").write_text("")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(serve_local.subprocess, "run", fake_pip)
    dest = serve_local._installed("numpy==1.26.4", tmp_path / "cache" / "numpy1", "a test")
    assert (dest / "numpy" / "__init__.py").exists()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755  # not mkdtemp's 0700: Triton's uid 1000 reads it
