"""One ONNX graph that runs every member of an ensemble and combines their outputs.

The combined graph has the members' token inputs (their union) and one ``logits`` output, so it drops into
the served pipeline (tokenizer -> classifier -> postprocess) as a plain classifier: its "logits" are chosen so
that the postprocess model's usual activation gives back the combined probabilities exactly.

- single-label, ``mean``: log of the mean of the members' softmax probabilities (softmax of it is that mean);
- single-label, ``vote``: log of each label's share of the members' argmax votes;
- multi-label: the logit of the mean of the members' sigmoid probabilities;
- regression: the mean of the members' scores.

Logs are taken of probabilities clamped to ``EPS`` so that no output is infinite (HTTP/JSON cannot carry it).
``expected`` computes the same combination in numpy from the members' own logits, for the parity check.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EPS = 1e-30
SINGLE, MULTI, REGRESSION = "single_label_classification", "multi_label_classification", "regression"


def expected(member_logits: Sequence[np.ndarray], task: str, method: str = "mean") -> np.ndarray:
    """The combined probabilities (scores for regression) of the members' logits [rows, outputs]."""
    stack = np.stack([np.asarray(x, dtype=np.float64) for x in member_logits])
    if task == REGRESSION:
        return stack.mean(axis=0)
    if task == MULTI:
        return (1.0 / (1.0 + np.exp(-stack))).mean(axis=0)
    if method == "vote":
        votes = np.eye(stack.shape[2])[stack.argmax(axis=2)]
        return votes.mean(axis=0)
    shifted = np.exp(stack - stack.max(axis=2, keepdims=True))
    return (shifted / shifted.sum(axis=2, keepdims=True)).mean(axis=0)


def combine(members: Sequence[object], inputs: Sequence[str], task: str, method: str, num_labels: int) -> object:
    """An onnx ModelProto running ``members`` (ModelProtos with a ``logits`` output) side by side.

    Raises:
        ValueError: the members were exported with different opsets (they cannot share one graph).
    """
    import onnx
    from onnx import TensorProto, compose, helper

    opsets = {tuple(sorted((o.domain, o.version) for o in m.opset_import)) for m in members}
    if len(opsets) != 1:
        raise ValueError(f"the members were exported with different opsets {sorted(opsets)}; export them alike")
    nodes, inits, functions, outs = [], [], [], []
    for k, member in enumerate(members):
        prefixed = compose.add_prefix(member, prefix=f"m{k}_")
        graph = prefixed.graph
        for inp in graph.input:
            if (shared := inp.name.removeprefix(f"m{k}_")) in inputs:
                nodes.append(helper.make_node("Identity", [shared], [inp.name]))
        nodes += list(graph.node)
        inits += list(graph.initializer)
        functions += list(prefixed.functions)
        outs.append(f"m{k}_logits")
    nodes += _combining_nodes(outs, task, method, num_labels, inits)
    graph = helper.make_graph(
        nodes, "ensemble",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in inputs],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_labels])],
        initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=list(members[0].opset_import), functions=functions)
    model.ir_version = max(m.ir_version for m in members)
    onnx.checker.check_model(model)
    return model


def _combining_nodes(outs: list[str], task: str, method: str, num_labels: int, inits: list) -> list:
    from onnx import helper, numpy_helper

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    node = helper.make_node
    if task == REGRESSION:
        return [node("Mean", outs, ["logits"])]
    eps = const("ens_eps", np.array(EPS, dtype=np.float32))
    if task == MULTI:
        one = const("ens_one", np.array(1.0, dtype=np.float32))
        return [
            *[node("Sigmoid", [o], [f"{o}_p"]) for o in outs],
            node("Mean", [f"{o}_p" for o in outs], ["ens_p"]),
            node("Sub", [one, "ens_p"], ["ens_q"]),
            node("Max", ["ens_p", eps], ["ens_pc"]),
            node("Max", ["ens_q", eps], ["ens_qc"]),
            node("Log", ["ens_pc"], ["ens_lp"]),
            node("Log", ["ens_qc"], ["ens_lq"]),
            node("Sub", ["ens_lp", "ens_lq"], ["logits"]),
        ]
    if method == "vote":
        depth = const("ens_depth", np.array(num_labels, dtype=np.int64))
        values = const("ens_onehot", np.array([0.0, 1.0], dtype=np.float32))
        shares = [
            n for o in outs for n in (
                node("ArgMax", [o], [f"{o}_vote"], axis=1, keepdims=0),
                node("OneHot", [f"{o}_vote", depth, values], [f"{o}_p"], axis=-1),
            )
        ]  # fmt: skip
    else:
        shares = [node("Softmax", [o], [f"{o}_p"], axis=-1) for o in outs]
    return [
        *shares,
        node("Mean", [f"{o}_p" for o in outs], ["ens_p"]),
        node("Max", ["ens_p", eps], ["ens_pc"]),
        node("Log", ["ens_pc"], ["logits"]),
    ]
