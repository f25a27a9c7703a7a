"""The GPU suite: encode, train and search, ours vs the OpenMatch-style reference, one table, same card.

    bash benchmarks/gpu_suite.sh                  # a GPU: T5-base / BERT-base shapes, MS MARCO lengths (<= 8 min)
    bash benchmarks/gpu_suite.sh --tiny           # anywhere (CI runs it): tiny models and sizes, same code paths

Everything is built here, offline: random-init models from configs (T5-base decoder-first-token, T5-base
encoder-only, BERT-base; the tokenizers of ``tests/tiny_models.py``, whose words are one token each) and a
synthetic corpus TSV of MS MARCO's lengths (title + ~56-word passages, 8-200 words), read through the real
tokenizer path. Rows:

- encode: ``api.build_index`` from the TSV to the written index (tokenisation included) vs the OpenMatch-style
  loop of ``bench_encode.py`` (pad to max length, batch 256, main-process tokenisation, fp16 autocast);
- train: ``bench_train.py``'s two steps (dynamic padding, fused AdamW vs pad-to-max, per-parameter AdamW), with
  the first-batch losses compared;
- search: exact top-k of float16 passages on the device, ``torch`` matmul + top-k
  (:func:`openmatch.retriever.torch_search.exact_topk`) vs faiss (GPU index when faiss has GPU support, else
  ``faiss.knn`` on the CPU), with the share of result ids found by both and of queries whose ranked id lists are
  identical.

``--output FILE`` also writes the rows as JSON. Numbers are only comparable within one run on one card.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from openmatch.cli import ArgumentParser  # noqa: E402  (one error line, as the commands)


@dataclass
class Sizes:
    passages: int
    p_max_len: int
    encode_batch: int
    workers: int
    train_steps: int
    search_passages: int
    search_queries: int
    search_dim: int
    depth: int
    model: str  # "base" or "tiny"


FULL = Sizes(passages=200_000, p_max_len=128, encode_batch=512, workers=8, train_steps=30,
             search_passages=8_841_823, search_queries=6_980, search_dim=768, depth=1000, model="base")
TINY = Sizes(passages=600, p_max_len=64, encode_batch=64, workers=1, train_steps=2,
             search_passages=20_000, search_queries=64, search_dim=32, depth=100, model="tiny")


# ------------------------------------------------------------------------------------------------ inputs

def write_corpus(path: Path, n: int, seed: int = 0) -> None:
    """A ``pid\\ttitle\\ttext`` TSV with MS MARCO's passage lengths in words the test tokenizers know."""
    import numpy as np
    from tests.tiny_models import synthetic_words

    rng = np.random.default_rng(seed)
    words = np.asarray(synthetic_words(1500))
    lengths = np.clip(rng.normal(56, 22, size=n).round().astype(int), 8, 200)
    title_lengths = rng.integers(0, 9, size=n)
    with open(path, "w", encoding="utf-8") as out:
        for pid, (length, title_length) in enumerate(zip(lengths, title_lengths)):
            title = " ".join(words[rng.integers(len(words), size=title_length)])
            text = " ".join(words[rng.integers(len(words), size=length)])
            out.write(f"{pid}\t{title}\t{text}\n")


def build_models(work: Path, size: str) -> dict[str, tuple[str, dict]]:
    """``{row name: (model folder, ModelArguments keywords)}`` of random-init models of the given size."""
    import torch
    from tests.tiny_models import build_fixed_vocab_bert_tokenizer, build_t5_tokenizer, _training_text
    from transformers import BertConfig, BertModel, T5Config, T5Model

    base = size == "base"
    t5_dir, bert_dir = work / "t5", work / "bert"
    t5_tok = build_t5_tokenizer(t5_dir)
    torch.manual_seed(0)
    T5Model(T5Config(
        vocab_size=32128 if base else len(t5_tok), d_model=768 if base else 32, d_kv=64 if base else 8,
        d_ff=3072 if base else 64, num_layers=12 if base else 2, num_decoder_layers=12 if base else 2,
        num_heads=12 if base else 4, feed_forward_proj="relu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )).save_pretrained(t5_dir)
    bert_tok = build_fixed_vocab_bert_tokenizer(bert_dir, _training_text())
    BertModel(BertConfig(
        vocab_size=30522 if base else len(bert_tok), hidden_size=768 if base else 32,
        num_hidden_layers=12 if base else 2, num_attention_heads=12 if base else 2,
        intermediate_size=3072 if base else 64, max_position_embeddings=512, pad_token_id=bert_tok.pad_token_id,
    )).save_pretrained(bert_dir)
    label = "base" if base else "tiny"
    return {
        f"T5-{label} decoder first token": (str(t5_dir), {}),
        f"T5-{label} encoder-only mean": (str(t5_dir), {"encoder_only": True, "pooling": "mean"}),
        f"BERT-{label} first": (str(bert_dir), {"pooling": "first"}),
    }


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores)"


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ stages

def encode_rows(sizes: Sizes, work: Path, corpus: Path) -> list[dict]:
    import torch
    from bench_encode import run_naive

    from openmatch import api
    from openmatch.arguments import ModelArguments

    on_gpu = torch.cuda.is_available()
    rows = []
    for name, (model_dir, flags) in build_models(work, sizes.model).items():
        model, tok = api.load_model(ModelArguments(model_name_or_path=model_dir, **flags))
        out = work / f"index-{len(rows)}"
        start = time.perf_counter()
        manifest = api.build_index(model, tok, corpus, out, max_len=sizes.p_max_len, batch_size=sizes.encode_batch,
                                   template="<title> <text>", column_names="id,title,text",
                                   num_workers=sizes.workers, bf16=on_gpu, progress=False)
        _sync()
        ours = manifest["total"] / (time.perf_counter() - start)
        del model
        reference = None
        if not flags:  # the recipe's model: OpenMatch's own encoding loop beside ours
            naive_args = SimpleNamespace(p_max_len=sizes.p_max_len)
            result = run_naive(naive_args, str(corpus), model_dir, [])
            reference = result["passages"] / result["seconds"]
        rows.append({"stage": "encode", "what": name, "ours": ours, "reference": reference, "unit": "passages/s",
                     "passages": manifest["total"],
                     "target": "20,000 p/s and 6x" if not flags else ""})
        if on_gpu:
            torch.cuda.empty_cache()
    return rows


def train_rows(sizes: Sizes, work: Path) -> list[dict]:
    from bench_train import build_model_folder

    model_dir = build_model_folder("t5-base-shape" if sizes.model == "base" else "tiny-t5", work / "train")
    results = {}
    for variant in ("reference", "ours"):
        cmd = [sys.executable, str(REPO / "benchmarks" / "bench_train.py"), f"--variant={variant}",
               f"--model_dir={model_dir}", "--pooling=first", "--synthetic", f"--steps={sizes.train_steps}",
               "--warmup=2", "--batch_size=8", "--n_passages=8", "--q_max_len=32", "--p_max_len=128"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise RuntimeError(f"bench_train {variant} failed:\n{proc.stderr[-3000:]}")
        results[variant] = json.loads(lines[-1][len("RESULT "):])
    loss_gap = abs(results["ours"]["first_loss"] - results["reference"]["first_loss"])
    return [{"stage": "train", "what": f"T5-{sizes.model} 8x8, q32/p128 (first-loss gap {loss_gap:.1e})",
             "ours": results["ours"]["steps_per_s"], "reference": results["reference"]["steps_per_s"],
             "unit": "steps/s", "target": "2x", "first_loss_gap": loss_gap}]


def search_rows(sizes: Sizes) -> list[dict]:
    import numpy as np
    import torch

    from openmatch.retriever.torch_search import exact_topk

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    generator = torch.Generator(device=device).manual_seed(0)
    block_rows = 1 << 20
    blocks = []
    for offset in range(0, sizes.search_passages, block_rows):
        n = min(block_rows, sizes.search_passages - offset)
        block = torch.randn(n, sizes.search_dim, device=device, generator=generator)
        blocks.append((offset, torch.nn.functional.normalize(block, dim=1).to(dtype)))
    queries = torch.nn.functional.normalize(
        torch.randn(sizes.search_queries, sizes.search_dim, device=device, generator=generator), dim=1)
    exact_topk(blocks[:1], queries[:8], min(sizes.depth, 16), device=device)  # warm-up (kernels, cuBLAS)
    _sync()
    start = time.perf_counter()
    t_scores, t_rows = exact_topk(blocks, queries, sizes.depth, device=device)
    _sync()
    torch_seconds = time.perf_counter() - start
    shape = f"{sizes.search_passages:,} x {sizes.search_dim} {str(dtype).split('.')[-1]}, {sizes.search_queries:,} queries, top-{sizes.depth}"
    row = {"stage": "search", "what": shape, "ours": sizes.search_queries / torch_seconds, "reference": None,
           "unit": "queries/s", "target": "<= 2 s", "torch_seconds": torch_seconds}
    faiss_result = _faiss_search(blocks, queries, sizes.depth)
    if faiss_result is not None:
        f_seconds, f_rows, where = faiss_result
        row["reference"] = sizes.search_queries / f_seconds
        row["faiss_seconds"] = f_seconds
        pairs = list(zip(t_rows.tolist(), f_rows.tolist()))
        row["same_ids"] = float(np.mean([len(set(a) & set(b)) / len(a) for a, b in pairs]))
        # Shared ids can hide a wrong ranking; identical lists also need the same order.
        row["same_order"] = float(np.mean([a == b for a, b in pairs]))
        row["what"] += f" (ref: faiss {where}; ids shared {row['same_ids']:.4f}, same order {row['same_order']:.4f})"
    else:
        row["what"] += " (faiss not installed)"
    return [row]


def _faiss_search(blocks, queries, depth):
    """``(seconds, ids, where)`` of faiss on the same vectors: a float16 GPU flat index if faiss has GPU support."""
    try:
        from openmatch.retriever.faiss_loader import has_gpu_support, import_faiss

        faiss = import_faiss()
    except ImportError:
        return None
    import numpy as np

    q = queries.float().cpu().numpy()
    if has_gpu_support(faiss):
        config = faiss.GpuIndexFlatConfig()
        config.useFloat16 = True
        index = faiss.GpuIndexFlatIP(faiss.StandardGpuResources(), q.shape[1], config)
        for _, block in blocks:
            index.add(block.float().cpu().numpy())
        index.search(q[:8], 16)
        start = time.perf_counter()
        _, ids = index.search(q, depth)
        return time.perf_counter() - start, ids, "GPU fp16 flat"
    corpus = np.concatenate([block.float().cpu().numpy() for _, block in blocks])
    start = time.perf_counter()
    _, ids = faiss.knn(q, corpus, depth, metric=faiss.METRIC_INNER_PRODUCT)
    return time.perf_counter() - start, ids, "CPU knn"


# ------------------------------------------------------------------------------------------------ table

def format_table(rows: list[dict], card: str) -> str:
    lines = [f"openmatch GPU suite on {card}", ""]
    header = f"{'stage':<7} {'what':<116} {'ours':>11} {'reference':>11} {'ratio':>7}  {'unit':<11} target"
    lines += [header, "-" * len(header)]
    for row in rows:
        ref = row["reference"]
        ratio = f"{row['ours'] / ref:.2f}x" if ref else "-"
        lines.append(f"{row['stage']:<7} {row['what'][:116]:<116} {row['ours']:>11.1f} "
                     f"{(f'{ref:.1f}' if ref else '-'):>11} {ratio:>7}  {row['unit']:<11} {row['target']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes (CPU, CI)")
    parser.add_argument("--stages", default="encode,train,search", help="comma-separated subset")
    parser.add_argument("--passages", type=int, help="corpus size for encoding")
    parser.add_argument("--search_passages", type=int, help="passages searched")
    parser.add_argument("--output", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sizes = TINY if args.tiny else FULL
    if args.passages:
        sizes.passages = args.passages
    if args.search_passages:
        sizes.search_passages = args.search_passages
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        work = Path(tmp)
        if "encode" in stages:
            corpus = work / "corpus.tsv"
            write_corpus(corpus, sizes.passages)
            rows += encode_rows(sizes, work, corpus)
        if "train" in stages:
            rows += train_rows(sizes, work)
    if "search" in stages:
        rows += search_rows(sizes)
    card = device_name()
    print(format_table(rows, card), flush=True)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump({"device": card, "sizes": vars(sizes), "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
