"""Publishing after a rolled-back publication: only a config makes a version served.

Found by the chaos test: a first publication whose load failed (Triton restarting) was rolled back, but the
restarted Triton had already loaded it and left its bytecode (``__pycache__``) in the version folders. The next
publication then listed that empty version in its config, and every Triton start failed to load it.
"""

from __future__ import annotations

from pathlib import Path

from finetune_trainer import triton_repo
from finetune_trainer.publish import publish

NAME = "rolled"


def test_leftovers_of_a_rolled_back_first_publication_are_never_served(tiny_export: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repository"
    for model in (NAME, f"{NAME}_tokenizer", f"{NAME}_postprocess"):
        cache = repo / model / "1" / "__pycache__"
        cache.mkdir(parents=True)
        (cache / "model.cpython-311.pyc").write_bytes(b"left by Triton's Python backend")
    result = publish(tiny_export, repo.as_uri(), NAME, backend="python")
    assert result.version == 2, "a number Triton may have loaded is not used again"
    assert result.served_versions == [2]
    for model in (NAME, f"{NAME}_tokenizer", f"{NAME}_postprocess"):
        config = triton_repo.parse_config((repo / model / "config.pbtxt").read_text())
        assert triton_repo.served_versions(config) == [2], config
