"""Triton Python-backend tokenizer: TEXT (and TEXT_PAIR) strings -> input_ids, attention_mask, token_type_ids.

Uses the exported tokenizer.json (Hugging Face ``tokenizers``) from this version's folder, truncated to the
configured maximum length and padded to a multiple of ``pad_to_multiple_of`` within each request, so that
requests of similar length share shapes and Triton's dynamic batcher can group them.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        self.tokenizer.enable_truncation(int(params["max_sequence_length"]))
        self.tokenizer.enable_padding(
            direction=params.get("padding_side", "right"),
            pad_id=int(params["pad_token_id"]),
            pad_token=params["pad_token"],
            pad_to_multiple_of=int(params.get("pad_to_multiple_of", "1")) or None,
        )
        self.outputs = [o["name"] for o in config["output"]]
        self.pair = any(i["name"] == "TEXT_PAIR" for i in config["input"])

    @staticmethod
    def _strings(request, name):
        values = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]

    def _encode(self, request):
        texts = self._strings(request, "TEXT")
        if self.pair:
            encodings = self.tokenizer.encode_batch(list(zip(texts, self._strings(request, "TEXT_PAIR"), strict=True)))
        else:
            encodings = self.tokenizer.encode_batch(texts)
        arrays = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return pb_utils.InferenceResponse([pb_utils.Tensor(name, arrays[name]) for name in self.outputs])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._encode(request))
            except (UnicodeDecodeError, ValueError) as e:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"TEXT: {e}")))
        return responses
