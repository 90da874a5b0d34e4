"""spec.pretraining's data: unlabelled domain text in, masked batches out.

The text loads from the same source forms as the dataset (``sources.local_files``; a hub name through
``datasets.load_dataset``). Masking is transformers' own ``DataCollatorForLanguageModeling`` (80% mask token, 10%
random token, 10% unchanged; with ``wholeWordMask`` every piece of a chosen word is masked), driven by a
generator seeded per batch, so that a batch's masks depend only on the seed, the stage's step and the rank: a
resumed stage masks exactly as the uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune_trainer import data as D
from finetune_trainer.config import DataFormat, PretrainingSpec
from finetune_trainer.errors import InputError
from finetune_trainer.preprocessing import clean
from finetune_trainer.sources import local_files

FIELD = "pretraining.source"


def load_texts(spec: PretrainingSpec, cache_dir: Path) -> list[str]:
    """The domain texts (non-empty), with errors that name the field, the file and the column."""
    import datasets

    datasets.disable_progress_bars()
    files = local_files(spec.source, FIELD, cache_dir)
    try:
        if files is None:
            ds = datasets.load_dataset(spec.source, split=spec.split or "train")
        else:
            D._check_utf8(files, FIELD)
            lines = spec.format == DataFormat.AUTO and all(f.suffix.lower() == ".txt" for f in files)
            builder, kwargs = ("text", {}) if lines else D._builder_for(files, spec.format, FIELD)
            ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train",
                                       cache_dir=str(cache_dir / "datasets"), **kwargs)
    except InputError:
        raise
    except Exception as e:  # datasets wraps parser errors in many types; all mean "this source is not readable"
        cause = e.__cause__ or e
        raise InputError(f"{FIELD}: cannot read {spec.source}: {type(cause).__name__}: {cause}".strip()) from None
    if spec.text_column not in ds.column_names:
        raise InputError(f"pretraining.textColumn {spec.text_column!r} not in columns {ds.column_names} of "
                         f"{spec.source}")
    texts = [t for t in ds[spec.text_column] if isinstance(t, str) and t.strip()]
    if len(texts) < 2:
        raise InputError(f"{FIELD}: {spec.source} has {len(texts)} non-empty texts in column "
                         f"{spec.text_column!r}; need at least 2 (some are held out to measure the stage)")
    if spec.max_samples is not None and len(texts) > spec.max_samples:
        keep = sorted(np.random.default_rng(0).permutation(len(texts))[: spec.max_samples])
        texts = [texts[i] for i in keep]
    return texts


def check_tokenizer(tokenizer: Any) -> None:
    """Masked-LM training needs a mask token, and the word boundaries of a fast tokenizer."""
    if tokenizer.mask_token is None:
        raise InputError("pretraining: the tokenizer of model.name has no mask token, so it cannot be trained as a "
                         "masked language model")
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("pretraining: the tokenizer of model.name has no fast version (tokenizer.json)")


@dataclass
class DomainText:
    """Tokenized domain text (no padding): ids, the special-token mask and, for whole-word masking, offsets."""

    input_ids: list[list[int]]
    special: list[list[int]]
    offsets: list[list[tuple[int, int]]] | None

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize(texts: list[str], tokenizer: Any, max_length: int, cleaning: tuple[str, ...],
             offsets: bool) -> DomainText:
    enc = tokenizer([clean(t, cleaning) for t in texts], truncation=True, max_length=max_length,
                    return_special_tokens_mask=True, return_offsets_mapping=offsets,
                    return_attention_mask=False, return_token_type_ids=False)
    return DomainText(enc["input_ids"], enc["special_tokens_mask"],
                      [list(map(tuple, o)) for o in enc["offset_mapping"]] if offsets else None)


def split(texts: list[str], share: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held out): a seeded ``share`` of the texts, at least one, held out."""
    order = np.random.default_rng(seed).permutation(len(texts))
    n = min(max(1, round(len(texts) * share)), len(texts) - 1)
    held = set(order[:n].tolist())
    return [t for i, t in enumerate(texts) if i not in held], [t for i, t in enumerate(texts) if i in held]


class Masker:
    """Pads a batch of ``DomainText`` rows and masks it with transformers' collator, seeded per batch."""

    def __init__(self, tokenizer: Any, spec: PretrainingSpec):
        import warnings

        from transformers import DataCollatorForLanguageModeling

        with warnings.catch_warnings():  # whole-word masking always uses the mask token: said in the docs
            warnings.simplefilter("ignore", UserWarning)
            self.collator = DataCollatorForLanguageModeling(
                tokenizer, mlm_probability=spec.mask_probability, whole_word_mask=spec.whole_word_mask)
        self.pad_id = tokenizer.pad_token_id or 0

    def __call__(self, data: DomainText, indices: list[int], seed: int) -> dict[str, torch.Tensor]:
        width = max(len(data.input_ids[i]) for i in indices)
        ids = torch.full((len(indices), width), self.pad_id, dtype=torch.long)
        special = torch.ones((len(indices), width), dtype=torch.long)  # padding is never masked
        attention = torch.zeros((len(indices), width), dtype=torch.long)
        offsets = torch.zeros((len(indices), width, 2), dtype=torch.long) if data.offsets is not None else None
        for row, i in enumerate(indices):
            n = len(data.input_ids[i])
            ids[row, :n] = torch.tensor(data.input_ids[i])
            special[row, :n] = torch.tensor(data.special[i])
            attention[row, :n] = 1
            if offsets is not None:
                offsets[row, :n] = torch.tensor(data.offsets[i])
        self.collator.generator = torch.Generator().manual_seed(seed)
        masked, labels = self.collator.torch_mask_tokens(ids, special_tokens_mask=special, offset_mapping=offsets)
        return {"input_ids": masked, "attention_mask": attention, "labels": labels}


def batch_seed(seed: int, epoch: int, micro: int, rank: int) -> int:
    """The masking seed of one micro-batch: a pure function of where it is in the stage."""
    return (seed * 1_000_003 + epoch * 100_003 + micro * 1_009 + rank) % 2**63
