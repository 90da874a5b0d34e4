"""Triton Python-backend postprocess: logits -> LABEL (string) and PROBABILITIES.

Single-label: softmax and the most probable label. Multi-label: sigmoid and every label at or above the
threshold, joined by commas. Regression: the raw score as both.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.labels = json.loads(params["labels"])
        self.task = params.get("task", "single_label_classification")
        self.threshold = float(params.get("threshold", "0.5"))

    def _labels(self, logits):
        if self.task == "multi_label_classification":
            probs = 1.0 / (1.0 + np.exp(-logits))
            names = [",".join(n for n, p in zip(self.labels, row, strict=True) if p >= self.threshold) for row in probs]
        elif self.task == "regression":
            probs = logits
            names = [f"{row[0]:.6g}" for row in logits]
        else:
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = shifted / shifted.sum(axis=1, keepdims=True)
            names = [self.labels[i] for i in probs.argmax(axis=1)]
        return names, probs.astype(np.float32)

    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "logits").as_numpy().astype(np.float64)
            names, probs = self._labels(logits)
            label = np.array([[n.encode("utf-8")] for n in names], dtype=np.object_)
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor("LABEL", label), pb_utils.Tensor("PROBABILITIES", probs)])
            )
        return responses
