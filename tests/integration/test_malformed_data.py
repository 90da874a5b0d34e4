"""Malformed dataset files through `finetune run`: each stops before training with exit code 2 and one `error:`
line naming the file and what is wrong (wrong encoding, ragged or broken CSV and JSON, huge lines, empty files,
labels of the wrong type). test_run_errors.py covers the simpler cases (missing file or column, a header-only
CSV, unknown label names and ids, Latin-1 text); this module covers what real files get wrong beyond those.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_run_errors import job_file, run_cli

HUGE = 4_000_000  # characters on one line


def _truncated_upload() -> bytes:
    """A JSON Lines file cut off in the middle of a huge second line, as an interrupted copy leaves it."""
    first = json.dumps({"text": "a fine film", "label": "positive"})
    return (first + "\n" + '{"text": "' + "long review " * (HUGE // 12)).encode()


CASES = {
    "utf16.csv": ("text,label\ngood film,positive\n".encode("utf-16"), {}, ["is not UTF-8 text", "line 1"]),
    "compressed.csv": (b"\x1f\x8b\x08\x00" + bytes(range(256)), {}, ["is not UTF-8 text", "re-encode it as UTF-8"]),
    "ragged.csv": (b"text,label\ngood,positive\nbad,negative,surplus\nfine,positive\n", {},
                   ["cannot read", "Expected 2 fields in line 3, saw 3"]),
    "short-row.csv": (b"text,label\ngood,positive\nbad\nfine,positive\n", {}, ["row 2 has no label"]),
    "open-quote.csv": (b'text,label\ngood,positive\n"bad,negative\nfine,positive\n', {},
                       ["cannot read", "EOF inside string starting at row 2"]),
    "truncated.jsonl": (_truncated_upload(), {}, ["cannot read", "JSON parse error", "row 1"]),
    "zero-bytes.csv": (b"", {}, ["has no rows"]),
    "blank-lines.csv": (b"\n\n   \n\n", {}, ["has no rows"]),
    "zero-bytes.jsonl": (b"", {}, ["has no rows"]),
    "no-records.json": (b"[]", {}, ["has no rows"]),
    "list-labels.jsonl": (b'{"text": "a", "label": ["sport", "money"]}\n{"text": "b", "label": ["food"]}\n', {},
                          ["row 1 is ['sport', 'money'], expected a label name or id",
                           "set task.type multi_label_classification"]),
    "object-labels.jsonl": (b'{"text": "a", "label": {"name": "sport"}}\n', {},
                            ["row 1 is {'name': 'sport'}, expected a label name or id"]),
    "boolean-labels.jsonl": (b'{"text": "a", "label": true}\n{"text": "b", "label": false}\n', {}, ["row 1 is True"]),
    "word-scores.csv": (b"text,label\ngood film,great\nbad film,2\n", {"task": {"type": "regression"}},
                        ["row 1 is 'great', expected a number for regression"]),
    "number-texts.csv": (b"text,label\n1,positive\n2,negative\n", {},
                         ["dataset.textColumn: row 1", "is 1, expected text"]),
    "bad-line.jsonl": (b'{"text": "a", "label": "x"}\n{"text": "b", "label": \n', {},
                       ["cannot read", "JSON parse error", "row 1"]),
}  # fmt: skip


@pytest.mark.parametrize("filename", sorted(CASES))
def test_malformed_file_stops_with_one_clear_error(filename: str, tmp_path: Path, tiny_bert: Path) -> None:
    content, spec, expected = CASES[filename]
    data = tmp_path / filename
    data.write_bytes(content)
    code, err = run_cli(job_file(tmp_path, tiny_bert, {"train": str(data)}, **spec), tmp_path)
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert filename in errors[0], errors[0]
    for text in expected:
        assert text in errors[0], errors[0]
    assert "Traceback" not in err
    assert len(errors[0]) < 2000, "the error line quotes the file instead of pointing into it"


def test_huge_valid_line_and_byte_order_mark_load_and_truncate(tmp_path: Path, tiny_bert: Path) -> None:
    """Not errors: a 4-million-character review is truncated to maxSeqLength, and a UTF-8 byte order mark (as
    spreadsheet exports write) is not part of the first column's name."""
    from transformers import AutoTokenizer

    from finetune_trainer import data as D
    from finetune_trainer.config import DatasetSpec, Hyperparameters, TaskSpec

    path = tmp_path / "bom-huge.csv"
    path.write_text("\ufefftext,label\n" + "word " * (HUGE // 5) + ",positive\nbad film,negative\n", encoding="utf-8")
    spec = DatasetSpec(train=str(path))
    split = D.load_split(str(path), spec, "dataset.train", tmp_path / "cache")
    assert len(split.texts) == 2 and len(split.texts[0]) >= HUGE - 5
    names = D.label_names_from([split], spec, TaskSpec())
    assert names == ["negative", "positive"]
    prep = D.preprocessing_of(spec, Hyperparameters(maxSeqLength=64))
    labels = D.encode_labels(split, names, TaskSpec())
    encoded = D.tokenize(split, AutoTokenizer.from_pretrained(tiny_bert), prep, labels)
    assert list(encoded.lengths) == [64, len(encoded.input_ids[1])] and encoded.labels.tolist() == [1, 0]
