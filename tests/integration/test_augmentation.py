"""`dataset.augmentation` in real training runs: the training split grows by the copies, a run resumed from a
mid-epoch checkpoint trains on the same augmented rows and ends with the same weights, and back-translation
runs the translation models it names through the same loading code as `model.name`."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from finetune_trainer import augment as A
from finetune_trainer.config import AugmentationSpec, BackTranslation
from finetune_trainer.data import TextSplit
from finetune_trainer.errors import InputError
from tests.fixtures.models import sentiment_rows, write_csv
from tests.integration.test_trainer import train_in_process, write_config

AUGMENT = {"copies": 2, "rate": 0.2}


def _run(tmp: Path, model: Path, data: tuple[Path, Path], storage: Path, **dataset) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    config = write_config(
        tmp, model, {"train": str(data[0]), "validation": str(data[1]), **dataset},
        hp={"maxSteps": 20, "batchSize": 8, "evalSteps": 20, "logEverySteps": 1},
        checkpoint={"storage": str(storage), "everySteps": 12, "keepLast": 5},
    )
    return train_in_process(config)


@pytest.mark.slow
def test_an_augmented_run_resumed_mid_epoch_equals_the_uninterrupted_one(tmp_path, tiny_bert):
    # 48 rows x 3 = 144 augmented rows = 18 steps an epoch: the step-12 checkpoint is mid-epoch 0 and step 20
    # is in epoch 1, whose copies differ from epoch 0's.
    data = (write_csv(tmp_path / "train.csv", sentiment_rows(48, seed=4)),
            write_csv(tmp_path / "val.csv", sentiment_rows(16, seed=5)))
    whole = _run(tmp_path / "a", tiny_bert, data, tmp_path / "ckpt-a", augmentation=AUGMENT)
    assert whole["train_samples"] == 48 * 3

    # The second run starts from the first one's step-12 checkpoint only.
    shutil.copytree(tmp_path / "ckpt-a", tmp_path / "ckpt-b")
    job = tmp_path / "ckpt-b" / "default" / "test"
    assert sorted(p.name for p in job.glob("checkpoint-*")) == ["checkpoint-00000012"]
    resumed = _run(tmp_path / "b", tiny_bert, data, tmp_path / "ckpt-b", augmentation=AUGMENT)

    assert resumed["history"][0]["step"] == 1 and resumed["history"][11]["step"] == 12  # history came along
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in whole["history"]], abs=1e-5)
    assert resumed["replica_checksums"] == whole["replica_checksums"]

    # Without augmentation the same job trains on other rows: the copies really are in the batches.
    plain = _run(tmp_path / "c", tiny_bert, data, tmp_path / "ckpt-c")
    assert plain["train_samples"] == 48
    assert [h["loss"] for h in plain["history"]][5:] != pytest.approx([h["loss"] for h in whole["history"]][5:])


def _tiny_translator(out: Path, tokenizer_dir: Path, seed: int) -> Path:
    """A randomly initialised (seeded) T5 with the tiny BERT's WordPiece tokenizer, saved with save_pretrained."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = T5Config(
        vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id, decoder_start_token_id=tok.cls_token_id,
    )
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.slow
def test_back_translation_adds_one_copy_made_by_the_named_models(tmp_path, tiny_bert):
    forward = _tiny_translator(tmp_path / "to-pivot", tiny_bert, seed=1)
    backward = _tiny_translator(tmp_path / "from-pivot", tiny_bert, seed=2)
    data = (write_csv(tmp_path / "train.csv", sentiment_rows(24, seed=4)),
            write_csv(tmp_path / "val.csv", sentiment_rows(8, seed=5)))
    spec = {"copies": 1, "rate": 0.2, "operations": ["swap"],
            "backTranslation": {"forwardModel": str(forward), "backwardModel": str(backward), "maxLength": 8}}
    metrics = _run(tmp_path / "run", tiny_bert, data, tmp_path / "ckpt", augmentation=spec)
    assert metrics["train_samples"] == 24 * 3

    # The extra copy of each example is what the two models make of it, translated one way and back.
    import csv

    rows = list(csv.DictReader(data[0].open()))[:4]
    split = TextSplit([r["text"] for r in rows], None, [r["label"] for r in rows], "train.csv")
    bt = BackTranslation.model_validate(spec["backTranslation"])
    back = A.back_translate(split.texts, bt, tmp_path / "cache")
    assert len(back) == 4 and back != split.texts and all(isinstance(t, str) for t in back)
    epoch0 = A.epochs(split, AugmentationSpec.model_validate(spec), 42, tmp_path / "cache")(0)
    assert epoch0.texts[8:] == back and epoch0.labels[8:] == split.labels

def test_a_missing_translation_model_is_named(tmp_path):
    spec = BackTranslation(forwardModel=str(tmp_path / "nope"), backwardModel="x")
    message = "dataset.augmentation.backTranslation.forwardModel: model folder not found"
    with pytest.raises(InputError, match=re.escape(message)):
        A.back_translate(["a text"], spec, tmp_path)

