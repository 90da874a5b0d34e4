"""Triton Python-backend classifier: serves this version's model.onnx through onnxruntime.

The production config uses Triton's onnxruntime backend on the same file; this model exists for Tritons
built without it. Requests that the dynamic batcher groups are run as one onnxruntime call per input shape.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_thread_count", "0"))
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args["model_instance_device_id"])}))
        path = os.path.join(folder, params.get("onnx_file", "model.onnx"))
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def execute(self, requests):
        feeds = [
            {name: pb_utils.get_input_tensor_by_name(r, name).as_numpy().astype(np.int64) for name in self.inputs}
            for r in requests
        ]
        groups = {}
        for i, feed in enumerate(feeds):
            groups.setdefault(tuple(feed["input_ids"].shape[1:]), []).append(i)
        logits = [None] * len(requests)
        for members in groups.values():
            batch = {n: np.concatenate([feeds[i][n] for i in members]) for n in self.inputs}
            out = self.session.run(["logits"], batch)[0].astype(np.float32)
            start = 0
            for i in members:
                size = feeds[i]["input_ids"].shape[0]
                logits[i] = out[start : start + size]
                start += size
        return [pb_utils.InferenceResponse([pb_utils.Tensor("logits", x)]) for x in logits]
