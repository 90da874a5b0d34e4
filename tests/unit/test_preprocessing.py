"""The one preprocessing definition: what it encodes, how it is recorded, and what an old model gets."""

from __future__ import annotations

import json

import pytest

from finetune_trainer import preprocessing as P

LONG = "first second " + "movie " * 80 + "fourth fifth"


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)


def tokens(hf_tokenizer, ids):
    return hf_tokenizer.convert_ids_to_tokens(ids)


@pytest.mark.parametrize("mode, side", [("head", "right"), ("tail", "left")])
def test_head_and_tail_match_the_tokenizers_own_truncation(hf_tokenizer, mode, side):
    ids, types = P.TextEncoder(hf_tokenizer.backend_tokenizer, P.Preprocessing(16, mode)).encode([LONG, "great"])
    hf_tokenizer.truncation_side = side
    expected = hf_tokenizer([LONG, "great"], truncation=True, max_length=16)["input_ids"]
    assert ids == expected and [len(t) for t in types] == [16, 3]
    assert tokens(hf_tokenizer, ids[0])[0] == "[CLS]" and tokens(hf_tokenizer, ids[0])[-1] == "[SEP]"


def test_head_tail_keeps_the_first_head_tokens_and_the_end(hf_tokenizer):
    (ids,), _ = P.TextEncoder(hf_tokenizer.backend_tokenizer, P.Preprocessing(12, "head_tail", 3)).encode([LONG])
    full = hf_tokenizer(LONG)["input_ids"]
    assert len(ids) == 12 and ids == full[:4] + full[-8:]
    t = tokens(hf_tokenizer, ids)
    assert t[:3] == ["[CLS]", "first", "second"] and t[-3:] == ["fourth", "fifth", "[SEP]"]


def test_short_texts_are_untouched_by_every_mode(hf_tokenizer):
    full = hf_tokenizer("the movie was great")["input_ids"]
    for mode in P.TRUNCATIONS:
        (ids,), _ = P.TextEncoder(hf_tokenizer.backend_tokenizer, P.Preprocessing(12, mode, 3)).encode(
            ["the movie was great"]
        )
        assert ids == full


def test_pairs_are_cut_longest_first_with_segment_ids(hf_tokenizer):
    for mode in P.TRUNCATIONS:
        enc = P.TextEncoder(hf_tokenizer.backend_tokenizer, P.Preprocessing(20, mode, 4, text_pair=True))
        (ids,), (types,) = enc.encode([LONG], ["great film"])
        assert len(ids) == 20 and types[-3:] == [1, 1, 1] and types[0] == 0


def test_the_encoder_leaves_the_callers_tokenizer_as_it_was(hf_tokenizer):
    backend = hf_tokenizer.backend_tokenizer
    before = json.loads(backend.to_str())["truncation"]
    P.TextEncoder(backend, P.Preprocessing(8, "tail")).encode([LONG])
    assert json.loads(backend.to_str())["truncation"] == before


def test_cleaning_steps_run_in_the_recorded_order(hf_tokenizer, monkeypatch):
    monkeypatch.setitem(P.CLEANING_STEPS, "drop_digits", lambda t: "".join(c for c in t if not c.isdigit()))
    monkeypatch.setitem(P.CLEANING_STEPS, "upper_to_great", lambda t: t.replace("GOOD", "great"))
    prep = P.Preprocessing(32, cleaning=("drop_digits", "upper_to_great"))
    (ids,), _ = P.TextEncoder(hf_tokenizer.backend_tokenizer, prep).encode(["GOOD 123 film"])
    assert ids == hf_tokenizer("great  film")["input_ids"]
    with pytest.raises(ValueError, match="cleaning steps \\['nope'\\]"):
        P.Preprocessing(32, cleaning=("nope",))


def test_recorded_beside_the_model_and_read_back(tmp_path):
    prep = P.Preprocessing(128, "head_tail", 64, text_pair=True)
    prep.save(tmp_path)
    assert json.loads((tmp_path / P.FILE).read_text())["truncation"] == "head_tail"
    assert P.load(tmp_path) == prep
    assert P.load(tmp_path / "nowhere") is None
    assert P.legacy(512) == P.Preprocessing(512, "head")


def test_a_newer_format_or_a_bad_mode_is_refused():
    with pytest.raises(ValueError, match="format_version 99"):
        P.Preprocessing.from_dict({"format_version": 99, "max_length": 8})
    with pytest.raises(ValueError, match="truncation 'middle'"):
        P.Preprocessing(8, "middle")
