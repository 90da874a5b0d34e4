"""maxSeqLength (and head + tail) checked against the model's position limit before any worker starts."""

from __future__ import annotations

import pytest

from finetune_trainer.config import Hyperparameters, ModelSpec
from finetune_trainer.errors import InputError
from finetune_trainer.limits import check_sequence_length, position_limit


def test_position_limits_of_bert_and_roberta():
    from transformers import BertConfig, RobertaConfig

    assert position_limit(BertConfig(max_position_embeddings=512)) == 512
    assert position_limit(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512  # positions after pad


def test_over_long_max_seq_length_names_the_field_the_limit_and_what_to_set(tiny_bert, tmp_path):
    model = ModelSpec(name=str(tiny_bert))  # max_position_embeddings 128
    check_sequence_length(model, Hyperparameters(max_seq_length=128), tmp_path)
    with pytest.raises(InputError) as e:
        check_sequence_length(model, Hyperparameters(max_seq_length=256), tmp_path)
    assert str(e.value) == (
        f"hyperparameters.maxSeqLength 256 exceeds the 128-token position limit of model {tiny_bert}; "
        "set maxSeqLength to at most 128"
    )


def test_head_plus_tail_over_the_limit_says_how_to_split_it(tiny_bert, tmp_path):
    """The seed recipe "head 512 + tail 128" on a 512-position model, here scaled to the tiny model's 128."""
    hp = Hyperparameters(max_seq_length=160, truncation="head_tail", head_tokens=128)
    with pytest.raises(InputError) as e:
        check_sequence_length(ModelSpec(name=str(tiny_bert)), hp, tmp_path)
    assert "maxSeqLength 160 (head_tail: headTokens 128 + 32 from the end) exceeds the 128-token" in str(e.value)
    assert "set maxSeqLength to at most 128, e.g. maxSeqLength 128 with headTokens 32" in str(e.value)
