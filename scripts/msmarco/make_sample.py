"""Generate a small collection in MS MARCO (RocketQA) layout, for running the recipe without real data.

    python scripts/msmarco/make_sample.py --output_dir work_dir/sample-marco [--passages 300] [--seed 13]

Each passage describes one invented animal of one place (what it eats, its colour, its size); a query asks
about one of them by its place, colour or size and food (in other words). Negatives in the triples file share the animal or the place with the positive, like the
lexical near-misses BM25 would return. Writes para.txt, para.title.txt, train.query.txt, dev.query.txt,
qrels.train.tsv, qrels.dev.tsv and qidpidtriples.train.full.2.tsv (CRLF, as the official file), with passage
ids that are not row numbers.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

ANIMALS = ["otter", "heron", "lynx", "beetle", "salmon", "badger", "falcon", "gecko", "bison", "moth", "newt",
           "walrus", "ibis", "marten", "tapir", "viper", "wren", "yak", "zebu", "koala"]
PLACES = ["the northern fjords", "the salt marshes", "the high plateau", "the river delta", "the pine forest",
          "the coral reef", "the desert basin", "the mangrove coast", "the alpine lakes", "the volcanic island",
          "the tundra", "the cloud forest", "the limestone caves", "the open steppe", "the kelp beds"]
FOODS = ["mussels", "berries", "beetles", "seeds", "small fish", "mosses", "lichens", "crayfish", "nectar",
         "bark", "snails", "algae", "grubs", "roots", "frogs"]
COLOURS = ["grey", "russet", "silver", "black", "ochre", "white", "olive", "brown", "copper", "slate"]
SIZES = ["tiny", "small", "medium-sized", "large", "very large"]
# Queries name the place and two attributes but never the animal, and use other words for the food, so
# passages of the same place are hard negatives and a model has something to learn.
FOOD_WORDS = {"mussels": "shellfish", "berries": "fruit", "beetles": "insects", "seeds": "grain",
              "small fish": "fish", "mosses": "moss", "lichens": "lichen", "crayfish": "crustaceans",
              "nectar": "flower juice", "bark": "tree bark", "snails": "molluscs", "algae": "seaweed",
              "grubs": "larvae", "roots": "tubers", "frogs": "amphibians"}
QUESTIONS = ["{s} {c} creature of {p} that eats {f}", "which {c} animal in {p} lives on {f}",
             "{p} animal, {s}, diet of {f}", "what {s} animal from {p} feeds on {f}"]


def generate(output_dir: Path, passages: int, seed: int, negatives_per_query: int = 20) -> None:
    rng = random.Random(seed)
    pairs = [(a, p) for a in ANIMALS for p in PLACES]
    rng.shuffle(pairs)
    pairs = pairs[: min(passages, len(pairs))]
    pids = rng.sample(range(10_000, 10_000 + 50 * len(pairs)), len(pairs))  # ids are not row numbers
    docs = {}
    for pid, (animal, place) in zip(pids, pairs):
        food, colour, size = rng.choice(FOODS), rng.choice(COLOURS), rng.choice(SIZES)
        title = f"The {animal} of {place}" if rng.random() > 0.1 else "-"
        text = (f"The {animal} that lives in {place} is a {size} {colour} animal. It feeds mostly on {food}, "
                f"and it is seldom seen far from {place}.")
        docs[pid] = (animal, place, title, text, food, colour, size)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "para.txt", "w") as para, open(output_dir / "para.title.txt", "w") as titles:
        for pid, (_, _, title, text, *_) in docs.items():
            para.write(f"{pid}\t{text}\n")
            titles.write(f"{pid}\t{title}\n")
    order = list(docs)
    rng.shuffle(order)
    split = int(len(order) * 0.8)
    for name, chosen, qid_base in (("train", order[:split], 0), ("dev", order[split:], 100_000)):
        with open(output_dir / f"{name}.query.txt", "w") as queries, open(output_dir / f"qrels.{name}.tsv", "w") as qrels:
            for offset, pid in enumerate(chosen):
                _, place, _, _, food, colour, size = docs[pid]
                qid = qid_base + offset
                question = rng.choice(QUESTIONS).format(p=place, f=FOOD_WORDS[food], c=colour, s=size)
                queries.write(f"{qid}\t{question}\n")
                qrels.write(f"{qid}\t0\t{pid}\t1\n")
    with open(output_dir / "qidpidtriples.train.full.2.tsv", "w", newline="") as triples:
        for offset, pid in enumerate(order[:split]):
            animal, place, *_ = docs[pid]
            near = [other for other, (a, p, *_) in docs.items() if other != pid and (a == animal or p == place)]
            for neg in rng.sample(near, min(negatives_per_query, len(near))):
                triples.write(f"{offset}\t{pid}\t{neg}\r\n")
    print(f"wrote {len(docs)} passages, {split} train and {len(order) - split} dev queries to {output_dir}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # argparse's own errors as one line, as openmatch's commands print them (this script runs without openmatch)
    parser.error = lambda message: parser.exit(2, f"error: {message} (its flags: --help)\n")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--passages", type=int, default=300, help="at most 300 (animals x places)")
    parser.add_argument("--seed", type=int, default=13)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    generate(Path(args.output_dir), args.passages, args.seed)


if __name__ == "__main__":
    main()
