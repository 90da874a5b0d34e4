"""`profiling`: a real run profiles the steps it was asked to, writing a Chrome trace and an operator table."""

from __future__ import annotations

import json

from tests.integration.test_trainer import train_in_process, write_config


def test_a_profiled_run_writes_a_chrome_trace_and_a_table_of_the_models_ops(tmp_path, tiny_bert, sentiment_csv):
    train, val = sentiment_csv
    storage = tmp_path / "ckpt"
    config = write_config(
        tmp_path, tiny_bert, {"train": str(train), "validation": str(val)}, hp={"maxSteps": 6},
        profiling={"startStep": 2, "endStep": 3, "rowLimit": 1000},
        checkpoint={"storage": str(storage), "everySteps": 100},
    )
    train_in_process(config)

    profile = tmp_path / "out" / "profile"
    trace = json.loads((profile / "trace-rank0.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    # The loop's phases, labelled in the trace, and the BERT's own operators.
    assert {"data", "forward", "backward", "optimizer"} <= names
    assert {"aten::embedding", "aten::layer_norm", "aten::linear"} <= names
    # Two steps were recorded: two optimizer phases, not the six of the whole run.
    assert sum(1 for e in trace["traceEvents"] if e.get("name") == "optimizer" and e.get("ph") == "X") == 2

    table = (profile / "key_averages-rank0.txt").read_text()
    assert table.startswith("# steps 2..3 of rank 0")
    # Every operator the BERT ran (rowLimit is above their number), with the memory columns.
    for op in ("aten::embedding", "aten::layer_norm", "aten::addmm", "aten::gelu", "forward", "Self CPU Mem"):
        assert op in table, op
    # The same files beside the job's checkpoints, where a cluster run keeps them.
    stored = storage / "default" / "test" / "profile"
    assert (stored / "trace-rank0.json").read_bytes() == (profile / "trace-rank0.json").read_bytes()
    assert (stored / "key_averages-rank0.txt").read_text() == table


def test_an_unprofiled_run_writes_no_profile(tmp_path, tiny_bert, sentiment_csv):
    train, val = sentiment_csv
    config = write_config(tmp_path, tiny_bert, {"train": str(train), "validation": str(val)}, hp={"maxSteps": 2})
    train_in_process(config)
    assert not (tmp_path / "out" / "profile").exists()
