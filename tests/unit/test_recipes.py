"""The recipe sections of hyperparameters (lora, layerDecay, trainTopLayers, headDropout) on a small BERT built
from its config: which parameters train, at which learning rate, and the errors that name the field."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, DistilBertConfig

from finetune_trainer import layerwise, lora
from finetune_trainer.config import ConfigError, Hyperparameters, LoraSpec, parse
from finetune_trainer.errors import InputError
from finetune_trainer.model import checkpoint_state, load_checkpoint_state, param_groups, prepare

LAYERS = 3


@pytest.fixture
def bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=LAYERS, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(config)


def hp(**fields) -> Hyperparameters:
    return parse(Hyperparameters, fields, prefix="spec.hyperparameters")


def test_lora_defaults_follow_the_usual_bert_recipe():
    spec = hp(lora={}).lora
    assert (spec.rank, spec.alpha, spec.dropout, spec.target_modules) == (16, 32.0, 0.1, None)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lora": {}, "freezeEncoder": True}, "freezeEncoder, lora: set only one"),
        ({"lora": {}, "trainTopLayers": 2}, "trainTopLayers, lora: set only one"),
        ({"lora": {"rank": 0}}, "spec.hyperparameters.lora.rank: expected a number of at least 1"),
        ({"lora": {"targetModules": []}}, "spec.hyperparameters.lora.targetModules"),
        ({"layerDecay": 1.5}, "spec.hyperparameters.layerDecay: expected a number of at most 1"),
        ({"trainTopLayers": 0}, "spec.hyperparameters.trainTopLayers: expected a number of at least 1"),
        ({"headDropout": 1.0}, "spec.hyperparameters.headDropout: expected a number less than 1"),
    ],
)
def test_bad_recipe_fields_are_named(fields, message):
    with pytest.raises(ConfigError) as e:
        hp(**fields)
    assert message in str(e.value)


def test_layer_decay_scales_each_layer_down_from_the_top(bert):
    groups = param_groups(bert, hp(learningRate=1e-3, headLearningRate=5e-3, layerDecay=0.5))
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    layers = bert.bert.encoder.layer
    for i, layer in enumerate(layers):
        expected = 1e-3 * 0.5 ** (LAYERS - 1 - i)
        assert sorted({lr_of[id(p)] for p in layer.parameters()}) == pytest.approx([expected])
    assert sorted({lr_of[id(p)] for p in bert.bert.embeddings.parameters()}) == pytest.approx([1e-3 * 0.5**LAYERS])
    assert sorted({lr_of[id(p)] for p in bert.bert.pooler.parameters()}) == pytest.approx([1e-3])
    assert {lr_of[id(p)] for p in bert.classifier.parameters()} == {5e-3}
    assert sum(len(g["params"]) for g in groups) == len(list(bert.parameters()))


def test_without_layer_decay_the_groups_are_as_before(bert):
    groups = param_groups(bert, hp(learningRate=1e-3))
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(1e-3, 0.01), (1e-3, 0.0), (1e-3, 0.01), (1e-3, 0.0)]


def test_train_top_layers_freezes_embeddings_and_lower_layers(bert):
    prepare(bert, hp(trainTopLayers=1))
    layers = bert.bert.encoder.layer
    assert not any(p.requires_grad for p in bert.bert.embeddings.parameters())
    assert not any(p.requires_grad for layer in layers[:-1] for p in layer.parameters())
    assert all(p.requires_grad for p in layers[-1].parameters())
    assert all(p.requires_grad for p in [*bert.bert.pooler.parameters(), *bert.classifier.parameters()])
    # the optimizer sees the trained parameters only, and checkpoints hold only those
    trained = {id(p) for p in bert.parameters() if p.requires_grad}
    assert {id(p) for g in param_groups(bert, hp(trainTopLayers=1)) for p in g["params"]} == trained
    assert set(checkpoint_state(bert)) == {n for n, p in bert.named_parameters() if p.requires_grad}


def test_train_top_layers_beyond_the_model_is_named(bert):
    with pytest.raises(InputError, match=r"hyperparameters.trainTopLayers is 4 but the model has 3 encoder layers"):
        prepare(bert, hp(trainTopLayers=4))


def test_head_dropout_setting_per_model_type():
    assert layerwise.head_dropout_kwargs(BertConfig(), 0.3) == {"classifier_dropout": 0.3}
    assert layerwise.head_dropout_kwargs(DistilBertConfig(), 0.3) == {"seq_classif_dropout": 0.3}


def test_lora_wraps_query_and_value_and_trains_the_head(bert):
    model = prepare(bert, hp(lora={"rank": 4}))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n or "classifier" in n or "pooler" in n for n in trained)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trained if "lora_" in n} == {"query", "value"}
    head = {id(p) for n, p in model.named_parameters() if p.requires_grad and "classifier" in n}
    assert all(p.requires_grad for n, p in model.named_parameters() if "pooler.modules_to_save" in n)
    groups = param_groups(model, hp(lora={"rank": 4}, learningRate=1e-3, headLearningRate=5e-3))
    assert {g["lr"] for g in groups if {id(p) for p in g["params"]} & head} == {5e-3}


def test_lora_checkpoint_state_round_trips_into_a_fresh_model(bert):
    model = prepare(bert, hp(lora={"rank": 4}))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    state = {k: v.clone() for k, v in checkpoint_state(model).items()}
    assert all("lora_" in k or "classifier" in k or "pooler" in k for k in state)
    torch.manual_seed(0)
    fresh = prepare(BertForSequenceClassification(bert.config), hp(lora={"rank": 4}))
    load_checkpoint_state(fresh, state)
    for k, v in checkpoint_state(fresh).items():
        torch.testing.assert_close(v, state[k])
    with pytest.raises(InputError, match="checkpoint does not fit"):
        load_checkpoint_state(fresh, {k: v for k, v in list(state.items())[1:]})


def test_merged_model_computes_what_the_adapted_one_does(bert):
    model = prepare(bert, hp(lora={"rank": 4})).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    ids = torch.randint(5, 50, (2, 7))
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        plain = lora.merged(model)
        assert not any("lora" in n for n, _ in plain.named_parameters())
        torch.testing.assert_close(plain(input_ids=ids).logits, adapted, atol=1e-5, rtol=1e-5)


def test_lora_target_modules_the_model_lacks_are_named(bert):
    with pytest.raises(InputError) as e:
        lora.target_modules(bert, LoraSpec(target_modules=["query", "q_proj"]))
    message = str(e.value)
    assert message.startswith("hyperparameters.lora.targetModules: ['q_proj'] not among")
    assert "'query'" in message and "'value'" in message
