"""`finetune run` with a recipe the model cannot take: exit 2 and one line naming the field, before torchrun
starts any worker."""

from __future__ import annotations

import pytest

from tests.integration.test_run_errors import good_csv, job_file, run_cli  # noqa: F401 - good_csv is a fixture


def assert_refused_before_workers(tmp_path, code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err
    assert not list((tmp_path / "runs").glob("*/checkpoints")) and not list((tmp_path / "runs").glob("*/model"))


def test_lora_target_modules_the_model_lacks(tmp_path, tiny_bert, good_csv):  # noqa: F811
    hp = {"lora": {"targetModules": ["query", "q_proj"]}}
    job = job_file(tmp_path, tiny_bert, {"train": str(good_csv)}, hyperparameters=hp)
    code, err = run_cli(job, tmp_path)
    assert_refused_before_workers(tmp_path, code, err, "hyperparameters.lora.targetModules: ['q_proj'] not among")


def test_train_top_layers_beyond_the_model(tmp_path, tiny_bert, good_csv):  # noqa: F811
    job = job_file(tmp_path, tiny_bert, {"train": str(good_csv)}, hyperparameters={"trainTopLayers": 3})
    code, err = run_cli(job, tmp_path)
    assert_refused_before_workers(tmp_path, code, err,
                                  "hyperparameters.trainTopLayers is 3 but the model has 2 encoder layers")


@pytest.mark.parametrize("hp", [{"lora": {}, "freezeEncoder": True}, {"layerDecay": 0}])
def test_spec_errors_name_the_field(tmp_path, tiny_bert, good_csv, hp):  # noqa: F811
    code, err = run_cli(job_file(tmp_path, tiny_bert, {"train": str(good_csv)}, hyperparameters=hp), tmp_path)
    assert code == 2 and "spec.hyperparameters" in err, err
