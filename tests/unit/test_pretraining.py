"""spec.pretraining: its fields and their errors, the domain text's loading and masking, and the stage as
progress and status show it."""

from __future__ import annotations

import json

import pytest
import torch

from finetune_operator.api import parse_job, parse_spec
from finetune_operator.steps import trainer_config
from finetune_trainer import contract
from finetune_trainer import pretrain_data as PD
from finetune_trainer.config import ConfigError, PretrainingSpec, parse
from finetune_trainer.errors import InputError
from tests.fixtures.models import make_tiny_bert, write_csv
from tests.unit.test_lifecycle import running, step, worker

SPEC = {"model": {"name": "m"}, "dataset": {"train": "t.csv"}}


def test_defaults():
    p = parse_spec({**SPEC, "pretraining": {"source": "domain.txt"}}).pretraining
    assert (p.mask_probability, p.epochs, p.max_steps, p.whole_word_mask, p.text_column) == (0.15, 1.0, None, False,
                                                                                             "text")
    assert p.learning_rate is None and p.batch_size is None  # the fine-tune's


@pytest.mark.parametrize(
    ("pretraining", "message"),
    [
        ({}, "spec.pretraining.source: expected a value"),
        ({"source": "d.txt", "maskProbability": 0}, "spec.pretraining.maskProbability: expected a number greater "
                                                    "than 0"),
        ({"source": "d.txt", "maskProbability": 1}, "spec.pretraining.maskProbability: expected a number less than 1"),
        ({"source": "d.txt", "epochs": None, "maxSteps": None}, "pretraining: one of epochs or maxSteps is required"),
        ({"source": "d.txt", "maxSteps": 0}, "spec.pretraining.maxSteps: expected a number of at least 1"),
        ({"source": "d.txt", "learningRate": 2}, "spec.pretraining.learningRate: expected a number less than 1"),
        ({"source": "d.txt", "validationSplit": 0.5}, "spec.pretraining.validationSplit"),
        ({"source": "d.txt", "textColum": "body"}, "spec.pretraining.textColum: expected no such field"),
        ({"source": ""}, "spec.pretraining.source: expected a non-empty string"),
    ],
)
def test_bad_pretraining_specs_name_the_field(pretraining, message):
    with pytest.raises(ConfigError) as e:
        parse_spec({**SPEC, "pretraining": pretraining})
    assert message in str(e.value)


def test_the_trainer_config_carries_the_stage():
    job = parse_job({"metadata": {"name": "p"}, "spec": {**SPEC, "pretraining": {"source": "s3://b/domain.csv",
                                                                                  "maxSteps": 50}}})
    cfg = trainer_config(job, "/tmp/out")
    assert cfg.pretraining is not None and cfg.pretraining.max_steps == 50
    assert json.loads(cfg.to_json())["pretraining"]["source"] == "s3://b/domain.csv"


def spec(source, **fields) -> PretrainingSpec:
    return parse(PretrainingSpec, {"source": str(source), **fields}, prefix="spec.pretraining")


def test_a_source_without_the_text_column_names_the_file_and_column(tmp_path):
    path = write_csv(tmp_path / "domain.csv", [{"body": "some domain text"}, {"body": "more of it"}])
    with pytest.raises(InputError) as e:
        PD.load_texts(spec(path), tmp_path / "cache")
    assert f"pretraining.textColumn 'text' not in columns ['body'] of {path}" in str(e.value)
    assert PD.load_texts(spec(path, textColumn="body"), tmp_path / "cache") == ["some domain text", "more of it"]


def test_text_files_are_one_text_per_line_and_empty_lines_are_skipped(tmp_path):
    (tmp_path / "domain.txt").write_text("first line\n\nsecond line\nthird, with a comma\n", encoding="utf-8")
    assert PD.load_texts(spec(tmp_path / "domain.txt"), tmp_path / "c") == ["first line", "second line",
                                                                           "third, with a comma"]
    assert len(PD.load_texts(spec(tmp_path / "domain.txt", maxSamples=2), tmp_path / "c")) == 2
    with pytest.raises(InputError, match=r"pretraining\.source: file not found"):
        PD.load_texts(spec(tmp_path / "missing.txt"), tmp_path / "c")


def test_held_out_texts_are_seeded_and_never_all_of_them():
    texts = [f"text {i}" for i in range(40)]
    train, held = PD.split(texts, 0.1, seed=3)
    assert len(held) == 4 and set(train) | set(held) == set(texts) and not set(train) & set(held)
    assert PD.split(texts, 0.1, seed=3) == (train, held)
    assert len(PD.split(texts[:2], 0.1, seed=3)[0]) == 1


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    folder = make_tiny_bert(tmp_path_factory.mktemp("tok"), ["alpha beta gamma delta"], hidden=16, layers=1)
    return AutoTokenizer.from_pretrained(folder)


def test_masks_depend_only_on_the_batch_seed(tokenizer):
    texts = ["alpha beta gamma delta alpha beta gamma delta"] * 8
    data = PD.tokenize(texts, tokenizer, 64, (), offsets=False)
    masker = PD.Masker(tokenizer, spec("x", maskProbability=0.3))
    a, b = masker(data, list(range(8)), seed=5), masker(data, list(range(8)), seed=5)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["labels"], masker(data, list(range(8)), seed=6)["labels"])
    special = torch.tensor(data.special)
    assert (a["labels"][special.bool()] == -100).all(), "[CLS] and [SEP] are never masked"
    assert ((a["labels"] != -100).sum(1) > 0).any()


def test_whole_word_masking_masks_every_piece_of_a_word(tokenizer):
    # "zyx" is not in the vocabulary: it is spelled z ##y ##x, three pieces of one word.
    texts = ["zyx alpha zyx beta zyx gamma zyx delta"] * 16
    data = PD.tokenize(texts, tokenizer, 64, (), offsets=True)
    assert tokenizer.convert_ids_to_tokens(data.input_ids[0][1:4]) == ["z", "##y", "##x"]
    batch = PD.Masker(tokenizer, spec("x", wholeWordMask=True, maskProbability=0.4))(data, list(range(16)), seed=1)
    masked = batch["labels"] != -100
    ids = torch.tensor(data.input_ids)
    words = [(1, 4), (5, 8), (9, 12), (13, 16)]  # the pieces of each "zyx"
    assert masked.any()
    for row in range(16):
        for start, end in words:
            assert masked[row, start:end].all() or not masked[row, start:end].any()
    assert (batch["input_ids"][masked] == tokenizer.mask_token_id).all()
    assert torch.equal(batch["labels"][masked], ids[masked])


def test_progress_records_carry_the_stage():
    record = contract.ProgressRecord(step=3, total_steps=10, stage=contract.STAGE_PRETRAINING)
    assert json.loads(record.to_json())["stage"] == "pretraining"
    assert contract.ProgressRecord.from_json(record.to_json()) == record
    assert "stage" not in contract.ProgressRecord(step=3).to_dict()  # a plain fine-tune has no stages
    assert contract.ProgressRecord.from_dict({"step": 1, "stage": "warmup"}).stage is None


@pytest.mark.parametrize("stage", contract.STAGES)
def test_status_shows_the_stage(stage):
    progress = {"stage": stage, "phase": "training", "step": 4, "totalSteps": 40, "epoch": 0.1, "percent": 10.0,
                "metrics": {"loss": 5.2}}
    d = step(running(), [worker(0), worker(1)], at=6, progress=progress)
    assert d.status["progress"]["stage"] == stage and d.status["progress"]["totalSteps"] == 40


def test_the_run_summary_shows_the_stage(tmp_path):
    from finetune_operator.local import LocalRun, summary

    run = LocalRun(tmp_path)
    run.metrics.write_text(json.dumps({"steps": 60, "validation": {"accuracy": 0.9}, "pretraining": {
        "steps": 40, "masked_lm_loss_before": 5.03, "masked_lm_loss_after": 2.93}}))
    assert "pretraining: masked-LM loss 5.0300 -> 2.9300 in 40 steps" in summary(run)
