"""How many real MASSIVE utterances the PII scrubber masks, per locale (all 52 locales,
every split). MASSIVE utterances are spoken-form and hold no real PII, so every mask
here is a false positive: the number to keep near zero.

    .venv/bin/python -m bench.pii_massive [--min-digits 7]
"""
from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter
from pathlib import Path

from selflearn.core.privacy import MASKS, scrub_utterance

MASSIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "massive" / "locales"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-digits", type=int, default=7)
    ap.add_argument("--data-dir", default=str(MASSIVE))
    args = ap.parse_args()
    total, masked_total = 0, 0
    print("locale   utterances  masked  share     email phone number  examples")
    for f in sorted(Path(args.data_dir).glob("*.jsonl.gz")):
        n, masked, kinds, examples = 0, 0, Counter(), []
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                utt = json.loads(line)["utt"]
                n += 1
                out, k = scrub_utterance(utt, args.min_digits)
                if k:
                    masked += 1
                    kinds.update(m for m in MASKS if m in out.split())
                    if len(examples) < 2:
                        examples.append(utt)
        total += n
        masked_total += masked
        print(f"{f.name.split('.')[0]:8} {n:10d} {masked:7d} {masked / n:7.4%}  {kinds['xxemailxx']:5d} {kinds['xxphonexx']:5d} {kinds['xxnumberxx']:6d}  {examples}")
    print(f"all      {total:10d} {masked_total:7d} {masked_total / total:7.4%}")


if __name__ == "__main__":
    main()
