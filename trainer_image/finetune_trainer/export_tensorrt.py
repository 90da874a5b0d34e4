"""A TensorRT engine (model.plan) from the exported graph, where a CUDA GPU and the tensorrt module allow it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any


def tensorrt_missing() -> str | None:
    """Why no TensorRT engine can be built here (no CUDA GPU, no tensorrt module), or None when one can."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU visible; TensorRT needs a GPU to build model.plan"
    if importlib.util.find_spec("tensorrt") is None:
        return ("the tensorrt Python module is not installed (build the trainer image's GPU variant: "
                "--build-arg VARIANT=gpu)")
    return None


def build_tensorrt(onnx_path: Path, plan: Path, names: list[str], max_batch: int, max_len: int) -> dict[str, Any]:
    """A TensorRT engine with one optimization profile over batch and sequence, when a GPU allows it."""
    missing = tensorrt_missing()
    if missing is not None:
        return {"status": "skipped", "reason": missing}
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    flags = 1 << int(explicit) if explicit is not None and int(trt.__version__.split(".")[0]) < 10 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        return {"status": "failed", "reason": f"TensorRT cannot parse {onnx_path.name}: {errors}"}
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    opt = (min(8, max_batch), min(128, max_len))
    for n in names:
        profile.set_shape(n, (1, 1), opt, (max_batch, max_len))
    config.add_optimization_profile(profile)
    if builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        return {"status": "failed", "reason": "TensorRT failed to build the engine (see its log above)"}
    plan.write_bytes(bytes(engine))
    return {
        "status": "done",
        "file": plan.name,
        "tensorrt_version": trt.__version__,
        "fp16": builder.platform_has_fast_fp16,
        "profile": {"min": [1, 1], "opt": list(opt), "max": [max_batch, max_len]},
    }
