"""`dataset.cleaning`: each named step does what its documentation says, in the order given, recorded with the
model; the seeds' rules (drop special symbols but keep @ # $ _, 1,000 -> 1000, one space) among them."""

from __future__ import annotations

import pytest

from finetune_operator.api import parse_job
from finetune_trainer import preprocessing as P
from finetune_trainer.config import ConfigError, DatasetSpec, Hyperparameters
from finetune_trainer.data import preprocessing_of

SEED_RULES = ["join_thousands", "strip_symbols", "normalize_whitespace"]


@pytest.mark.parametrize(
    ("step", "text", "cleaned"),
    [
        ("nfkc", "Ｈｉ １２ ﬁne", "Hi 12 fine"),  # noqa: RUF001 - full-width letters and a ligature are the point
        ("lowercase", "GREAT Film", "great film"),
        ("strip_html", "good<br />fun &amp; <b>long</b>", "good fun &  long "),
        ("strip_urls", "see https://x.io/a?b=1 and www.example.com now", "see   and   now"),
        ("join_thousands", "1,000 and 12,345,678 but 1,23 and 1,2345", "1000 and 12345678 but 1,23 and 1,2345"),
        ("strip_symbols", "Great!!! :-) #win @bob_x $5 don't", "Great  #win @bob_x $5 dont"),
        ("strip_symbols", "你好，世界。Привет!", "你好世界Привет"),  # noqa: RUF001 - letters of every script stay
        ("normalize_whitespace", "  a \t b\n\n c  ", "a b c"),
    ],
)
def test_each_step(step, text, cleaned):
    assert P.CLEANING_STEPS[step](text) == cleaned


def test_the_seed_rules_in_order():
    text = "Price:  $1,000,000 (was $2,500)!!  #deal @shop_1 \n"
    assert P.clean(text, SEED_RULES) == "Price $1000000 was $2500 #deal @shop_1"
    # The order is the user's: whitespace normalised before symbols are stripped keeps the gaps they leave.
    assert P.clean("a , b", ["strip_symbols", "normalize_whitespace"]) == "a b"
    assert P.clean("a , b", ["normalize_whitespace", "strip_symbols"]) == "a  b"

def test_the_job_names_the_steps_and_the_model_records_them(tmp_path):
    spec = DatasetSpec(train="t.csv", cleaning=SEED_RULES)
    prep = preprocessing_of(spec, Hyperparameters())
    assert prep.cleaning == tuple(SEED_RULES)
    prep.save(tmp_path)
    assert P.load(tmp_path).cleaning == tuple(SEED_RULES)


def test_an_unknown_step_is_named_with_the_choices():
    with pytest.raises(ConfigError) as e:
        parse_job({"metadata": {"name": "c"},
                   "spec": {"model": {"name": "m"}, "dataset": {"train": "t.csv", "cleaning": ["strip_emoji"]}}})
    assert "spec.dataset.cleaning[0]: expected one of" in str(e.value) and "'strip_symbols'" in str(e.value)
