"""The model's own limits, checked against the job before training: a spec error naming the field, the limit
and what to set, instead of an index error inside every worker (and a retry per ``backoffLimit``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune_trainer.config import Hyperparameters, ModelSpec, Truncation
from finetune_trainer.errors import InputError
from finetune_trainer.sources import model_location

# Models whose position ids start after the padding index: max_position_embeddings - (pad_token_id + 1) usable.
OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "data2vec-text", "xmod", "roberta-prelayernorm"}


def position_limit(config: Any) -> int | None:
    """How many tokens (special tokens included) the model can take, or None when its config does not say."""
    limit = getattr(config, "max_position_embeddings", None)
    if not limit:
        return None
    if getattr(config, "model_type", None) in OFFSET_POSITIONS:
        limit -= (getattr(config, "pad_token_id", None) or 0) + 1
    return int(limit)


def check_sequence_length(model: ModelSpec, hp: Hyperparameters, cache_dir: Path) -> None:
    """Raise InputError when ``maxSeqLength`` (for head_tail: head plus tail) exceeds the model's position limit."""
    from transformers import AutoConfig

    where = model_location(model.name, "model.name", cache_dir)
    try:
        config = AutoConfig.from_pretrained(where, revision=model.revision, trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise InputError(f"model.name: cannot read the config of {model.name}: {e}") from None
    limit = position_limit(config)
    if limit is None or hp.max_seq_length <= limit:
        return
    field = f"hyperparameters.maxSeqLength {hp.max_seq_length}"
    advice = f"set maxSeqLength to at most {limit}"
    if hp.truncation == Truncation.HEAD_TAIL:
        tail = hp.max_seq_length - hp.head_tokens
        field += f" (head_tail: headTokens {hp.head_tokens} + {tail} from the end)"
        advice += f", e.g. maxSeqLength {limit} with headTokens {min(hp.head_tokens, limit // 4)}"
    raise InputError(f"{field} exceeds the {limit}-token position limit of model {model.name}; {advice}")
