"""Build selflearn/spoken_email.json: the words for '@' and '.' (and the spoken top-level
domains) the PII scrubber reads as a spoken e-mail address outside English
(selflearn.core.privacy; English keeps its own rule there).

A user who dictates an address in Spanish says "juan arroba gmail punto com", in Russian
"иван собака gmail точка com", in Polish "jan małpa gmail kropka com": no '@' reaches the
log, and the English rule ("john at gmail dot com") does not see them. MASSIVE has such
addresses in every locale, annotated as the slot `email_address`; this script reads the
slot values of the **train** partition only (the tests and the README's measurement use
the test and dev partitions) and takes, per locale, the words that stand where an address
has its '@', its last '.' and its top-level domain:

    <local> <AT> <domain> <DOT> <TLD>      the value's tokens -4, -2 and -1

(<AT> may be two tokens where the second is a spelled letter: Swedish "snabel a."). A word
is kept when it stands in that place in at least MIN_COUNT values of the locale and is not
a spelled letter ("d."). The scrubber then matches one locale's words together (its AT,
its DOT, its TLDs plus com, net, org and the locale's country code), so a word that is
common in one language ("point", "à", "et") never pairs with another language's words.

    python -m bench.spoken_email          # reads ../shared/data/massive, writes the table
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "selflearn" / "spoken_email.json"
MASSIVE = REPO.parent / "shared" / "data" / "massive" / "locales"
SLOT = re.compile(r"\[email_address : ([^\]]*)\]")
MIN_COUNT = 3  # of about 30 train values per locale; 2 lets in "a", "sur", "на" as '@'


def slot_values(path: Path, partitions: set[str]) -> list[list[str]]:
    """The case-folded tokens of every email_address value in those partitions."""
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["partition"] in partitions:
                out += [m.group(1).casefold().split() for m in SLOT.finditer(rec["annot_utt"])]
    return out


def words_of(values: list[list[str]], min_count: int = MIN_COUNT) -> dict[str, list[str]]:
    """{at, dot, tld}: the words that stand in those places in >= min_count values."""
    at, dot, tld = collections.Counter(), collections.Counter(), collections.Counter()
    for t in values:
        # a written domain ("gmail.com'a") is the written-address rule's, not this one's
        if len(t) >= 3 and not any("." in x[:-1] or "@" in x for x in t[-2:]):
            tld[t[-1]] += 1
            dot[t[-2]] += 1
        if len(t) >= 5:
            at[t[-4]] += 1
            if len(t) >= 6 and (t[-4].endswith(".") or len(t[-4]) == 1):
                at[f"{t[-5]} {t[-4]}"] += 1

    def kept(c: collections.Counter) -> list[str]:
        return sorted(w for w, n in c.items() if n >= min_count and (" " in w or not w.endswith(".")))

    return {"at": kept(at), "dot": kept(dot), "tld": kept(tld)}


def build(massive: Path = MASSIVE, min_count: int = MIN_COUNT) -> dict:
    locales = {}
    for path in sorted(massive.glob("*.jsonl.gz")):
        locales[path.name[: -len(".jsonl.gz")]] = words_of(slot_values(path, {"train"}), min_count)
    return {"source": f"MASSIVE 1.1 train partition, slot email_address, min_count {min_count} "
                      "(bench/spoken_email.py)", "locales": locales}


def check(massive: Path = MASSIVE) -> dict:
    """What the shipped scrubber does on what the table was not built from: every test and
    dev utterance of each locale whose email_address value has a local part (>= 4 tokens:
    "<local> <at> <domain> <dot> <tld>" or longer) should hold a mask; no utterance of any
    partition without an email_address slot should get one."""
    import time

    from selflearn.core.privacy import EMAIL_MASK, scrub_text

    per_locale, false_pos, misses, n_texts = {}, [], [], 0
    t0 = time.perf_counter()
    for path in sorted(massive.glob("*.jsonl.gz")):
        locale, held, masked = path.name[: -len(".jsonl.gz")], 0, 0
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                values = [m.group(1) for m in SLOT.finditer(rec["annot_utt"])]
                n_texts += 1
                hit = EMAIL_MASK in scrub_text(rec["utt"]).split()
                if not values:
                    if hit:
                        false_pos.append((locale, rec["partition"], rec["utt"]))
                elif rec["partition"] != "train" and any(len(v.split()) >= 4 for v in values):
                    held, masked = held + 1, masked + hit
                    if not hit:
                        misses.append((locale, rec["utt"]))
        per_locale[locale] = (masked, held)
    return {"per_locale": per_locale, "false_positives": false_pos, "misses": misses,
            "texts": n_texts, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--massive", type=Path, default=MASSIVE)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--check", action="store_true", help="measure the shipped table on the test and dev partitions")
    args = ap.parse_args()
    if args.check:
        r = check(args.massive)
        masked = sum(m for m, _ in r["per_locale"].values())
        held = sum(h for _, h in r["per_locale"].values())
        full = sum(1 for m, h in r["per_locale"].values() if h and m == h)
        print(f"held-out dictated addresses masked: {masked} of {held} ({masked / held:.3f}); "
              f"every one in {full} of {len(r['per_locale'])} locales")
        print(" ".join(f"{loc} {m}/{h}" for loc, (m, h) in r["per_locale"].items()))
        print(f"texts without an address that got a mask: {len(r['false_positives'])} of {r['texts']:,} "
              f"({r['texts'] / r['seconds']:,.0f} texts/s through scrub_text)")
        for fp in r["false_positives"]:
            print("  mask without a slot:", *fp)
        for miss in r["misses"]:
            print("  missed:", *miss)
        return
    table = build(args.massive)
    # one line per locale: a reviewer reads the table as a table
    lines = [f'  {json.dumps(loc)}: {json.dumps(words, ensure_ascii=False)}' for loc, words in table["locales"].items()]
    text = '{\n "source": ' + json.dumps(table["source"]) + ',\n "locales": {\n' + ",\n".join(lines) + "\n }\n}\n"
    json.loads(text)  # still JSON
    args.out.write_text(text, encoding="utf-8")
    print(f"{args.out}: {len(table['locales'])} locales")


if __name__ == "__main__":
    main()
