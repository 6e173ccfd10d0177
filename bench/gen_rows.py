#!/usr/bin/env python3
"""Deterministic benchmark input:

    python3 bench/gen_rows.py N OUT.csv [SEED] [--style plain|rich|short] [--texts OUT.txt]

Writes a CSV with header `id,text` and N rows. Each text is ~150 words
(130-170) of pseudo-English: sentences of 6-18 words drawn from a fixed word
list with a seeded PRNG, capitalised, with occasional commas and a full stop.
The stream does not depend on N, so the first 100,000 rows of a 1,000,000-row
file equal the 100,000-row file. About 3 s per 100,000 rows (~100 MB); 1M rows
work too, written in blocks with constant memory.

Styles: `plain` (the default above); `rich`, the same texts with some words
in other scripts (accents, Greek, Cyrillic, CJK, emoji), some phrases in
double quotes and some sentences on new lines, so the CSV quoting and the
tokenizer's unicode paths are exercised; `short`, six words per text (the
shape of a 10,000,000-row job).

`--texts OUT.txt` also writes the bare texts to a plain text file, each
followed by one ASCII record separator byte (0x1E, which no text contains):
the input of the tokenizer-only baseline, with no CSV to parse.
"""
import operator
import random
import sys

WORDS = """
the of and to in is was that for it as with be on not he by are this at from
but have an they which one you were all we her she there would their will when
who him been has more if no out do so can what up said about other into than
its time only could new them man some these then two first may any like now my
such make over our even most me state after also made many did must before back
see through way where get much go well your know should down work year because
come people just say each those take day good how long very world little use
own us great last three life might water part under both never around between
again house every point hand while public thing place against high school
system number course left end government small side head however find fact
part turn large present power order home area problem form service young water
early question report community policy evidence student teacher answer grade
essay reason example result research analysis method language history science
market family health process education experience account development interest
information relationship environment understanding performance opportunity
approximately significantly particularly nevertheless consequently furthermore
photosynthesis mitochondria infrastructure responsibility characteristic
quickly slowly carefully clearly simply rather quite almost perhaps certainly
strong weak bright dark simple complex careful honest modern ancient local
global clear useful important possible different available similar social
economic political natural human central national general personal private
argue believe consider develop explain improve include increase produce
provide require suggest support describe discuss measure observe compare
""".split()
# Exactly 256 distinct words, so one random byte picks one word.
WORDS = list(dict.fromkeys(WORDS))[:256]
assert len(WORDS) == 256

SEED = 20261127


def text(rng, words=WORDS):
    r = rng.random
    n = 130 + int(r() * 41)
    # One random byte per word, looked up in C by itemgetter: fast enough
    # for 1M rows (the per-word Python loop of rng.choices is not).
    toks = list(operator.itemgetter(*rng.randbytes(n))(words))
    out = []
    i = 0
    while i < n:
        k = min(6 + int(r() * 13), n - i)
        sent = toks[i:i + k]
        if k > 8 and r() < 0.4:
            c = 3 + int(r() * (k - 5))
            sent[c] += ","
        sent[0] = sent[0].capitalize()
        out.append(" ".join(sent))
        i += k
    return ". ".join(out) + "."


# Words in other scripts for the `rich` style.
FOREIGN = ["café", "naïve", "Größe", "façade", "smørrebrød", "λόγος", "мир",
           "данные", "東京", "学生", "評価", "한국어", "😀", "👍🏽", "→", "½",
           "señor", "İstanbul", "ǅemal", "Ωmega"]


def rich_text(rng):
    r = rng.random
    words = text(rng).split(" ")
    for i in range(len(words)):
        x = r()
        if x < 0.06:
            words[i] = FOREIGN[int(r() * len(FOREIGN))]
        elif x < 0.08:
            words[i] = '"' + words[i] + '"'
    out = " ".join(words)
    # Some sentence breaks become line breaks.
    return out.replace(". ", ".\n", 1 + int(r() * 3)) if r() < 0.7 else out


def short_text(rng):
    toks = operator.itemgetter(*rng.randbytes(6))(WORDS)
    return " ".join(toks).capitalize() + "."


def main():
    args = sys.argv[1:]
    style, texts_path = "plain", None
    while "--style" in args or "--texts" in args:
        for flag in ("--style", "--texts"):
            if flag in args:
                i = args.index(flag)
                if i + 1 >= len(args):
                    sys.exit(f"gen_rows.py: {flag} needs a value")
                value = args[i + 1]
                del args[i:i + 2]
                if flag == "--style":
                    style = value
                else:
                    texts_path = value
    if len(args) not in (2, 3) or style not in ("plain", "rich", "short"):
        sys.exit("usage: gen_rows.py N OUT.csv [SEED] [--style plain|rich|short] [--texts OUT.txt]")
    n = int(args[0])
    seed = int(args[2]) if len(args) == 3 else SEED
    rng = random.Random(seed)
    make = {"plain": text, "rich": rich_text, "short": short_text}[style]
    texts = open(texts_path, "w", newline="", encoding="utf-8") if texts_path else None
    # Every text is written in double quotes with inner quotes doubled
    # (valid RFC 4180, and twice as fast as csv.writer).
    with open(args[1], "w", newline="", encoding="utf-8") as f:
        f.write("id,text\n")
        block = 10_000
        for start in range(0, n, block):
            batch = [make(rng) for _ in range(start, min(n, start + block))]
            f.write("".join(f'{start + k + 1},"{t.replace(chr(34), chr(34) * 2)}"\n'
                            for k, t in enumerate(batch)))
            if texts:
                texts.write("".join(t + "\x1e" for t in batch))
    if texts:
        texts.close()


if __name__ == "__main__":
    main()
