"""Rasa reads selflearn's Rasa export as `training/` says: every row, its intent, its
entities. The export is parsed by Rasa's own loader in a Rasa install apart from
selflearn's venv (bench/rasa_read.py; no Rasa release installs beside selflearn's
dependencies), and what Rasa read is compared, example by example, with the run's
`training/`:

    make rasa-check RUN=demo-out/root    # builds .venv-rasa once (rasa-pro), then this
    PYTHONPATH=$PWD .venv/bin/python bench/rasa_check.py --run ROOT [--rasa-python .venv-rasa/bin/python]

Expected of each `training/` row with `weight >= --min-weight`: one example in
`<locale>/nlu.yml` (split `train`) or `<locale>/test_nlu.yml` (`dev`) with the row's text and
intent, whose entities are the row's slots whose value occurs in the text (name and value),
each at offsets that hold its value. Exit status 1 on any difference (the first few printed)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
FILE_OF_SPLIT = {"train": "nlu.yml", "dev": "test_nlu.yml"}


def expected_examples(training: pd.DataFrame, min_weight: float = 0.0) -> pd.DataFrame:
    """One row per example the export should hold: locale, file, text, intent, entities
    (a sorted tuple of (slot name, value) for the slots whose value occurs in the text)."""
    kept = training[training["weight"].astype(float) >= min_weight]
    ents = []
    for text, slots in zip(kept["text"], kept["slots"]):
        slots = [] if slots is None else [(str(s["name"]), str(s["value"])) for s in slots]
        ents.append(tuple(sorted((n, v) for n, v in slots if v and v in text)))
    return pd.DataFrame({"locale": kept["locale"].astype(str).to_numpy(), "file": kept["split"].map(FILE_OF_SPLIT).to_numpy(),
                         "text": kept["text"].to_numpy(), "intent": kept["intent"].astype(str).to_numpy(), "entities": ents})


def compare(parsed: list[dict], expected: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per locale: examples expected, read by Rasa, with the same intent, with the same
    entities at offsets holding their values; and every difference, described."""
    problems: list[str] = []
    got: dict[tuple, dict] = {}
    for e in parsed:
        k = (e["locale"], e["file"], e["text"])
        if k in got:
            problems.append(f"Rasa read {k} twice")
        got[k] = e
    rows = []
    for locale, g in expected.groupby("locale", sort=True):
        n_read = n_intent = n_entities = 0
        for r in g.itertuples(index=False):
            e = got.pop((r.locale, r.file, r.text), None)
            if e is None:
                problems.append(f"{r.locale}/{r.file}: Rasa did not read {r.text!r}")
                continue
            n_read += 1
            if e["intent"] == r.intent:
                n_intent += 1
            else:
                problems.append(f"{r.locale}/{r.file}: {r.text!r} read as intent {e['intent']!r}, not {r.intent!r}")
            found = tuple(sorted((x["entity"], x["value"]) for x in e["entities"]))
            at_offsets = all(r.text[x["start"]:x["end"]] == x["value"] for x in e["entities"])
            if found == r.entities and at_offsets:
                n_entities += 1
            else:
                problems.append(f"{r.locale}/{r.file}: {r.text!r} entities {e['entities']} against slots {list(r.entities)}")
        rows.append((locale, len(g), n_read, n_intent, n_entities, int(sum(len(x) for x in g["entities"]))))
    problems += [f"{k[0]}/{k[1]}: Rasa read {k[2]!r}, which training/ does not hold" for k in got]
    table = pd.DataFrame(rows, columns=["locale", "expected", "read_by_rasa", "same_intent", "same_entities", "entities"])
    return table, problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="parse selflearn's Rasa export with Rasa and compare it with training/")
    p.add_argument("--run", required=True, help="ROOT (its LATEST run) or a run directory")
    p.add_argument("--rasa-python", default=str(REPO / ".venv-rasa" / "bin" / "python"),
                   help="the Python of a Rasa install (make rasa-check builds .venv-rasa)")
    p.add_argument("--min-weight", type=float, default=0.0, help="export_min_weight for the export")
    args = p.parse_args(argv)

    from selflearn.evaluation.evaluate import resolve_run
    from selflearn.serving.export import export, read_training

    run = resolve_run(args.run)
    if not Path(args.rasa_python).is_file():
        print(f"rasa_check: no Rasa Python at {args.rasa_python} (make rasa-check builds .venv-rasa)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        rasa_dir = export(run, tmp, "rasa", args.min_weight)
        out = Path(tmp) / "parsed.json"
        r = subprocess.run([args.rasa_python, str(REPO / "bench" / "rasa_read.py"), str(rasa_dir), str(out)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stdout + r.stderr[-3000:], file=sys.stderr)
            print("rasa_check: Rasa could not read the export", file=sys.stderr)
            return 1
        parsed = json.loads(out.read_text(encoding="utf-8"))
    table, problems = compare(parsed["examples"], expected_examples(read_training(run), args.min_weight))
    print(f"run {run.name}; Rasa {parsed['rasa_version']} read {len(parsed['examples'])} examples from {parsed['files']} files")
    total = table.drop(columns="locale").sum()
    print(pd.concat([table, pd.DataFrame([{"locale": "all", **total.to_dict()}])], ignore_index=True).to_string(index=False))
    for line in problems[:10]:
        print("  " + line)
    print(f"differences: {len(problems)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
