#!/usr/bin/env bash
# The MS MARCO recipe's two shell steps, run in a RocketQA-style "marco" folder (default: the current one):
#   para.txt + para.title.txt               -> corpus.tsv          (pid<TAB>title<TAB>text, sorted by pid)
#   qidpidtriples.train.full.2.tsv (CRLF)   -> train.negatives.tsv (qid<TAB>neg1,neg2,...)
# Usage: scripts/msmarco/prepare_marco.sh [MARCO_DIR [OUT_DIR]]
#
# The join is the recipe's command verbatim. The awk is the recipe's with one fix: `NR>1 &&` in the first
# rule. In the recipe's version the unset variable `last` compares equal to a first query id of 0 (awk
# compares an unset variable as the number 0), so the first query's line loses its "qid<TAB>" prefix.
#
# Memory: the three sorts run at the same time (two feed the join, one sorts its output). GNU sort sizes its
# buffer from the input and the free memory, which made 4.8 GB at MS MARCO's size; each gets a fixed buffer
# instead (SORT_BUFFER, 1G by default: 3 GiB in all) and spills to temporary files in a folder next to the
# output (it needs about twice corpus.tsv's size there, 7.5 GB on MS MARCO), removed at the end. The output
# is the same bytes whatever the buffer: a sort that spills merges its runs back in the same order.
set -euo pipefail
IN=$(cd "${1:-.}" && pwd)
OUT=${2:-$IN}
mkdir -p "$OUT"
cd "$OUT"
for f in para.txt para.title.txt qidpidtriples.train.full.2.tsv; do
    [ -f "$IN/$f" ] || { echo "error: $IN/$f: no such file" >&2; exit 2; }
done

SORT_TMP=$(mktemp -d "$PWD/.prepare_marco.XXXXXX")  # $PWD is OUT, which may be relative
trap 'rm -rf "$SORT_TMP"' EXIT
SORT=(sort -S "${SORT_BUFFER:-1G}" -T "$SORT_TMP")
join  -t "$(echo -en '\t')"  -e '' -a 1  -o 1.1 2.2 1.2  <("${SORT[@]}" -k1,1 "$IN/para.txt") <("${SORT[@]}" -k1,1 "$IN/para.title.txt") | "${SORT[@]}" -k1,1 -n > corpus.tsv.tmp
mv corpus.tsv.tmp corpus.tsv

awk -v RS='\r\n' 'NR>1 && $1==last {printf ",%s",$3; next} NR>1 {print "";} {last=$1; printf "%s\t%s",$1,$3;} END{print "";}' "$IN/qidpidtriples.train.full.2.tsv" > train.negatives.tsv.tmp
mv train.negatives.tsv.tmp train.negatives.tsv

echo "wrote $OUT/corpus.tsv ($(wc -l < corpus.tsv) passages) and $OUT/train.negatives.tsv ($(wc -l < train.negatives.tsv) queries)"
