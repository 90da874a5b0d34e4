"""Offline prediction from a saved model folder (``RUN_DIR/model``), in this process, the way Triton serves it:
the model's recorded preprocessing (``preprocessing.json``: cleaning, truncation, max length, text pair) through
the same ``TextEncoder``, and the same ``postprocessing`` of the logits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from finetune_trainer import postprocessing, preprocessing
from finetune_trainer.errors import InputError


class LocalClassifier:
    """A ``save_pretrained`` classifier folder, ready to label texts.

    Raises:
        InputError: the folder is not a saved classifier with a fast tokenizer.
    """

    def __init__(self, folder: str | Path, batch_size: int = 32):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from finetune_trainer.export_inputs import input_names, label_names, task_of

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise InputError(f"--model {folder}: no config.json; expected a model folder such as RUN_DIR/model")
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        except (OSError, ValueError) as e:
            raise InputError(f"--model {folder}: cannot load the classifier or its tokenizer: {e}") from None
        if not tokenizer.is_fast:
            raise InputError(f"--model {folder}: the tokenizer has no fast version (tokenizer.json)")
        config = self.model.config
        limit = min(x for x in (config.max_position_embeddings, tokenizer.model_max_length, 512) if x)
        self.preprocessing = preprocessing.load(folder) or preprocessing.legacy(limit)
        self.encoder = preprocessing.TextEncoder(tokenizer.backend_tokenizer, self.preprocessing)
        self.inputs = input_names(self.model, tokenizer)
        self.labels = label_names(config)
        self.task = task_of(config)
        self.pad_id = tokenizer.pad_token_id or 0
        self.batch_size = batch_size

    @property
    def text_pair(self) -> bool:
        return self.preprocessing.text_pair

    def logits(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> np.ndarray:
        import torch

        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            pair = list(pairs[start : start + self.batch_size]) if pairs is not None else None
            ids, types = self.encoder.encode(chunk, pair)
            width = max(len(x) for x in ids)
            arrays = {name: torch.zeros((len(ids), width), dtype=torch.long) for name in self.inputs}
            arrays["input_ids"].fill_(self.pad_id)
            for row, (x, t) in enumerate(zip(ids, types, strict=True)):
                arrays["input_ids"][row, : len(x)] = torch.tensor(x)
                arrays["attention_mask"][row, : len(x)] = 1
                if "token_type_ids" in arrays:
                    arrays["token_type_ids"][row, : len(x)] = torch.tensor(t)
            with torch.inference_mode():
                out.append(self.model(**arrays).logits.float().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), dtype=np.float32)

    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        """Label names and probabilities (scores for regression) of each text, as the served model gives them."""
        return postprocessing.postprocess(self.logits(texts, pairs), self.labels, self.task)
