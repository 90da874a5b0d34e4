"""Triton Python-backend postprocess: logits -> LABEL (string) and PROBABILITIES.

The arithmetic is the trainer's own ``postprocessing.py``, copied into this version's folder by publication
(Triton has no trainer package), so offline prediction and the served model report the same labels and
probabilities: softmax and the most probable label (single-label), sigmoid and every label at or above the
threshold joined by commas (multi-label), the raw score as both (regression).
"""

import importlib.util
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


def _load_module(path):
    # By path, not by name: the version folder's copy is the definition published with this model.
    spec = importlib.util.spec_from_file_location("finetune_postprocessing", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.post = _load_module(os.path.join(folder, "postprocessing.py"))
        self.labels = json.loads(params["labels"])
        self.task = params.get("task", "single_label_classification")
        self.threshold = float(params.get("threshold", "0.5"))

    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "logits").as_numpy()
            names, probs = self.post.postprocess(logits, self.labels, self.task, self.threshold)
            label = np.array([[n.encode("utf-8")] for n in names], dtype=np.object_)
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor("LABEL", label), pb_utils.Tensor("PROBABILITIES", probs)])
            )
        return responses
