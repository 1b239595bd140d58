"""`selflearn export`: `training/` in the formats trainers read as is.

    selflearn export --run ROOT --format hf   --output DIR   # DIR/hf: datasets.load_from_disk(DIR/hf)
    selflearn export --run ROOT --format rasa --output DIR   # DIR/rasa/<locale>/nlu.yml (+ test_nlu.yml)

`hf`: a `datasets.DatasetDict` saved with `save_to_disk`, splits `train` and `validation`
(the run's `split` column: `train` and `dev`), columns `locale`, `text`, `label` (a
`ClassLabel` over every intent of the run, so a sequence-classification trainer takes it
as is), `intent`, `domain`, `slots`, `entities` (each slot's character span in `text`:
`name`, `start`, `end`, in text order, for a slot-filling trainer), `weight` (use it as
the per-example loss weight), `label_source`.

`rasa`: Rasa NLU training data (YAML, format version "3.1"), one project folder per
locale (a Rasa pipeline is per language): `nlu.yml` from the `train` split and
`test_nlu.yml` from `dev`, each intent with its examples, slot values marked as entities
in Rasa's `[value](name)` markup (a text key holds no brackets or parentheses, so the markup
cannot be confused with text). Rasa has no example weights: rows under `export_min_weight`
are left out.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from selflearn.core.text import normalize_text, token_occurrences

RASA_VERSION = "3.1"


def read_training(run_dir: str | Path) -> pd.DataFrame:
    df = pd.read_parquet(Path(run_dir) / "training")
    return df.sort_values(["locale", "intent", "text"], kind="mergesort").reset_index(drop=True)


def _slots(slots) -> list[dict]:
    return [] if slots is None else [{"name": str(s["name"]), "value": str(s["value"])} for s in slots]


def export_hf(training: pd.DataFrame, out_dir: str | Path) -> Path:
    import datasets

    intents = sorted(training["intent"].unique())
    features = datasets.Features({
        "locale": datasets.Value("string"), "text": datasets.Value("string"),
        "label": datasets.ClassLabel(names=intents), "intent": datasets.Value("string"),
        "domain": datasets.Value("string"),
        "slots": [{"name": datasets.Value("string"), "value": datasets.Value("string")}],  # a list of structs
        # where the text says each slot (export.slot_spans): what a slot-filling (token
        # classification) trainer aligns its tags to, in text order
        "entities": [{"name": datasets.Value("string"), "start": datasets.Value("int32"), "end": datasets.Value("int32")}],
        "weight": datasets.Value("float32"), "label_source": datasets.Value("string"),
    })
    label_of = {name: i for i, name in enumerate(intents)}
    splits = {}
    for split, name in (("train", "train"), ("dev", "validation")):
        d = training[training["split"] == split]
        splits[name] = datasets.Dataset.from_dict({
            "locale": d["locale"].tolist(), "text": d["text"].tolist(),
            "label": [label_of[i] for i in d["intent"]], "intent": d["intent"].tolist(),
            "domain": [None if pd.isna(x) else str(x) for x in d["domain"]],
            "slots": [_slots(s) for s in d["slots"]],
            "entities": [[{"name": n, "start": a, "end": b} for a, b, n in slot_spans(t, s)] for t, s in zip(d["text"], d["slots"])],
            "weight": d["weight"].astype(float).tolist(), "label_source": d["label_source"].tolist(),
        }, features=features)
    path = Path(out_dir) / "hf"
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


def slot_spans(text: str, slots) -> list[tuple[int, int, str]]:
    """(start, end, slot name) of each slot value in `text` (where it occurs as a token
    sequence, `text.token_occurrences`: the rule of paraphrase admissibility), in text
    order, none overlapping another. Slots are placed longest value first, each at its first free
    occurrence, so the order the slots are listed in does not matter ("today afternoon
    three" with slots date, time, timeofday) and a value inside a longer one does not take
    its place. A value with no free occurrence (it occurs only inside another slot's
    value: Rasa's markup cannot nest) is left unmarked."""
    values = [{"name": s["name"], "value": normalize_text(s["value"])} for s in _slots(slots)]
    taken: list[tuple[int, int, str]] = []
    for s in sorted((v for v in values if v["value"]), key=lambda s: -len(s["value"])):  # stable: ties keep the listed order
        for at in token_occurrences(s["value"], text):
            end = at + len(s["value"])
            if all(end <= a or at >= b for a, b, _ in taken):
                taken.append((at, end, s["name"]))
                break
    return sorted(taken)


def rasa_example(text: str, slots) -> str:
    """The text key with each slot value marked `[value](name)` where it is said
    (`slot_spans`)."""
    out, pos = [], 0
    for start, end, name in slot_spans(text, slots):
        out.append(text[pos:start])
        out.append(f"[{text[start:end]}]({name})")
        pos = end
    out.append(text[pos:])
    return "".join(out)


class _Literal(str):
    """A string YAML writes as a literal block (`|`), as Rasa's own files write examples."""


def _rasa_yaml(rows: pd.DataFrame) -> str:
    import yaml

    nlu = []
    for intent, g in rows.groupby("intent", sort=True):
        examples = "".join(f"- {rasa_example(t, s)}\n" for t, s in zip(g["text"], g["slots"]))
        nlu.append({"intent": str(intent), "examples": examples})

    class Dumper(yaml.SafeDumper):  # its own class: the global SafeDumper stays as it is
        pass

    Dumper.add_representer(_Literal, lambda dumper, data: dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|"))
    doc = {"version": RASA_VERSION, "nlu": [{"intent": n["intent"], "examples": _Literal(n["examples"])} for n in nlu]}
    return yaml.dump(doc, Dumper=Dumper, allow_unicode=True, sort_keys=False, width=10_000)


def export_rasa(training: pd.DataFrame, out_dir: str | Path, min_weight: float = 0.0) -> Path:
    path = Path(out_dir) / "rasa"
    kept = training[training["weight"].astype(float) >= min_weight]
    for locale, g in kept.groupby("locale", sort=True):
        d = path / str(locale)
        d.mkdir(parents=True, exist_ok=True)
        for split, name in (("train", "nlu.yml"), ("dev", "test_nlu.yml")):
            rows = g[g["split"] == split]
            if len(rows):
                (d / name).write_text(_rasa_yaml(rows), encoding="utf-8")
    return path


def export(run_dir: str | Path, out_dir: str | Path, fmt: str, min_weight: float = 0.0) -> Path:
    training = read_training(run_dir)
    if fmt == "hf":
        return export_hf(training, out_dir)
    if fmt == "rasa":
        return export_rasa(training, out_dir, min_weight)
    raise ValueError(f"unknown export format {fmt!r} (rasa or hf)")
