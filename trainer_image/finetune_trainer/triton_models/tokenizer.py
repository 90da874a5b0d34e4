"""Triton Python-backend tokenizer: TEXT (and TEXT_PAIR) strings -> input_ids, attention_mask, token_type_ids.

Encodes with this version's tokenizer.json (Hugging Face ``tokenizers``) through the trainer's own
``preprocessing.py`` and the model's ``preprocessing.json`` (cleaning, truncation, head tokens, max length),
both copied into the version folder by publication, so the served model sees the token ids it was trained
and evaluated on. A version without ``preprocessing.json`` (exported before it was recorded) keeps the first
``max_sequence_length`` tokens, as such versions always did, and says so in Triton's log. Each request is
padded to a multiple of ``pad_to_multiple_of``, so that requests of similar length share shapes and Triton's
dynamic batcher can group them.
"""

import importlib.util
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer


def _load_module(path):
    # By path, not by name: the version folder's copy is the definition this model was trained with.
    spec = importlib.util.spec_from_file_location("finetune_preprocessing", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        pre = _load_module(os.path.join(folder, "preprocessing.py"))
        self.pair = any(i["name"] == "TEXT_PAIR" for i in config["input"])
        recorded = pre.load(folder)
        if recorded is None:
            recorded = pre.legacy(int(params["max_sequence_length"]), self.pair)
            pb_utils.Logger.log_warn(
                f"{args['model_name']} version {args['model_version']}: no {pre.FILE}; keeping the first "
                f"{recorded.max_length} tokens (the behaviour of models exported before it was recorded)"
            )
        self.encoder = pre.TextEncoder(Tokenizer.from_file(os.path.join(folder, "tokenizer.json")), recorded)
        self.pad_id = int(params["pad_token_id"])
        self.left = params.get("padding_side", "right") == "left"
        self.multiple = max(1, int(params.get("pad_to_multiple_of", "1") or 1))
        self.outputs = [o["name"] for o in config["output"]]

    @staticmethod
    def _strings(request, name):
        values = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]

    def _encode(self, request):
        pairs = self._strings(request, "TEXT_PAIR") if self.pair else None
        ids, types = self.encoder.encode(self._strings(request, "TEXT"), pairs)
        longest = max(len(x) for x in ids)
        width = -(-longest // self.multiple) * self.multiple
        arrays = {
            "input_ids": np.full((len(ids), width), self.pad_id, dtype=np.int64),
            "attention_mask": np.zeros((len(ids), width), dtype=np.int64),
            "token_type_ids": np.zeros((len(ids), width), dtype=np.int64),
        }
        for row, (x, t) in enumerate(zip(ids, types, strict=True)):
            cols = slice(width - len(x), width) if self.left else slice(0, len(x))
            arrays["input_ids"][row, cols] = x
            arrays["attention_mask"][row, cols] = 1
            arrays["token_type_ids"][row, cols] = t
        return pb_utils.InferenceResponse([pb_utils.Tensor(name, arrays[name]) for name in self.outputs])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._encode(request))
            except (UnicodeDecodeError, ValueError) as e:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"TEXT: {e}")))
        return responses
