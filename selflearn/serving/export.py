"""`selflearn export`: `training/` in the formats trainers read as is.

    selflearn export --run ROOT --format hf   --output DIR   # DIR/hf: datasets.load_from_disk(DIR/hf)
    selflearn export --run ROOT --format rasa --output DIR   # DIR/rasa/<locale>/nlu.yml (+ test_nlu.yml)

`hf`: a `datasets.DatasetDict` saved with `save_to_disk`, splits `train` and `validation`
(the run's `split` column: `train` and `dev`), columns `locale`, `text`, `label` (a
`ClassLabel` over every intent of the run, so a sequence-classification trainer takes it
as is), `intent`, `domain`, `slots`, `entities` (each slot's character span in `text`:
`name`, `start`, `end`, in text order, for a slot-filling trainer), `weight` (use it as
the per-example loss weight), `label_source`. Both splits are always there: a run with
no `dev` row gets an empty `validation` split (one empty shard with the features, so
`load_from_disk` reads it; a line on stderr says so).

`rasa`: Rasa NLU training data (YAML, format version "3.1"), one project folder per
locale (a Rasa pipeline is per language): `nlu.yml` from the `train` split and
`test_nlu.yml` from `dev`, each intent with its examples, slot values marked as entities
in Rasa's `[value](name)` markup (a text key holds no brackets or parentheses, so the markup
cannot be confused with text). Rasa has no example weights: rows under `export_min_weight`
are left out. A row whose intent, or the name of a slot it marks, is not made of letters,
digits, '_', '-' and '.' is left out too (`rasa_name_ok`), counted in one line on stderr:
Rasa would misread it (`[v](a:b)` is entity `a` with synonym `b`, `)` ends the markup,
`faq/ask` is a retrieval intent).

An export describes one run: it is written into a temporary sibling of `DIR/rasa` or
`DIR/hf` and renamed into place (`_replace_dir`), so no file of an earlier export survives
and a crash leaves the earlier export, never half of the new one. A run with no training
row (or, for `rasa`, none left to write) is refused with one line (`NothingToExport`, the
CLI's exit 2) and writes nothing.
"""
from __future__ import annotations

import os
import shutil
import sys
import unicodedata
import uuid
from pathlib import Path
from typing import Callable

import pandas as pd

from selflearn.core.text import normalize_text, token_occurrences

RASA_VERSION = "3.1"


class NothingToExport(ValueError):
    """The run has nothing to write: the CLI says so in one line and exits 2."""


def rasa_name_ok(name: str) -> bool:
    """Whether Rasa reads `name`, as an intent or an entity name, as written: letters,
    digits, '_', '-', '.' only (its entity markup takes `[^:)]+` as the name, ':' starting a
    synonym; ']' or '(' break the `[value](name)` pair; '/' in an intent makes a retrieval
    intent; a space or '#' is no name a Rasa domain or pipeline expects)."""
    return bool(name) and all(c.isalnum() or c in "_-." or unicodedata.category(c).startswith("M") for c in name)


def _replace_dir(final: Path, write: Callable[[Path], None]) -> Path:
    """Write a whole export into a new sibling of `final`, then rename it into place (the
    earlier `final`, if any, is renamed aside just before and removed after): no file of an
    earlier export survives, and a crash while writing leaves the earlier export as it was.
    Between the two renames `final` is briefly missing, never a mix of two exports."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp, old = final.parent / f".{final.name}.new-{tag}", final.parent / f".{final.name}.old-{tag}"
    tmp.mkdir()
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    had_old = final.exists() or final.is_symlink()
    if had_old:
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        if had_old:
            os.rename(old, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if had_old:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    return final


def read_training(run_dir: str | Path) -> pd.DataFrame:
    df = pd.read_parquet(Path(run_dir) / "training")
    return df.sort_values(["locale", "intent", "text"], kind="mergesort").reset_index(drop=True)


def _slots(slots) -> list[dict]:
    return [] if slots is None else [{"name": str(s["name"]), "value": str(s["value"])} for s in slots]


def export_hf(training: pd.DataFrame, out_dir: str | Path) -> Path:
    if training.empty:
        raise NothingToExport("the run's training/ has no row: nothing to export")
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
    empty = [name for name, ds in splits.items() if len(ds) == 0]
    if empty:
        print(f"selflearn export: split {', '.join(empty)} is empty (the run has no "
              f"{' or '.join('dev' if n == 'validation' else n for n in empty)} row)", file=sys.stderr)
    # an empty split saved with datasets' default sharding has no shard at all, and
    # load_from_disk fails on it (IndexError): one empty shard holds its schema
    dd = datasets.DatasetDict(splits)
    return _replace_dir(Path(out_dir) / "hf", lambda tmp: dd.save_to_disk(
        str(tmp), num_shards={name: 1 for name in empty}))


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
    if training.empty:
        raise NothingToExport("the run's training/ has no row: nothing to export")
    kept = training[training["weight"].astype(float) >= min_weight]
    if kept.empty:
        raise NothingToExport(f"no training row has a weight of at least export_min_weight ({min_weight:g}): nothing to export")
    readable = [rasa_name_ok(str(i)) and all(rasa_name_ok(n) for _, _, n in slot_spans(t, s))
                for i, t, s in zip(kept["intent"], kept["text"], kept["slots"])]
    left_out = kept[[not ok for ok in readable]]
    kept = kept[readable]
    if len(left_out):
        bad = sorted({str(i) for i in left_out["intent"] if not rasa_name_ok(str(i))})
        bad_slots = sorted({n for t, s in zip(left_out["text"], left_out["slots"]) for _, _, n in slot_spans(t, s)
                            if not rasa_name_ok(n)})
        said = "; ".join(part for part in (
            f"intent {', '.join(map(repr, bad[:5]))}{' ...' if len(bad) > 5 else ''}" if bad else "",
            f"slot {', '.join(map(repr, bad_slots[:5]))}{' ...' if len(bad_slots) > 5 else ''}" if bad_slots else "",
        ) if part)
        print(f"selflearn export: left out {len(left_out)} of {len(left_out) + len(kept)} rows whose intent or slot "
              f"name Rasa would misread (only letters, digits, '_', '-', '.' are exported): {said}", file=sys.stderr)
    if kept.empty:
        raise NothingToExport("no training row left to write in Rasa's format: nothing to export")

    def write(tmp: Path) -> None:
        for locale, g in kept.groupby("locale", sort=True):
            d = tmp / str(locale)
            d.mkdir()
            for split, name in (("train", "nlu.yml"), ("dev", "test_nlu.yml")):
                rows = g[g["split"] == split]
                if len(rows):
                    (d / name).write_text(_rasa_yaml(rows), encoding="utf-8")

    return _replace_dir(Path(out_dir) / "rasa", write)


def export(run_dir: str | Path, out_dir: str | Path, fmt: str, min_weight: float = 0.0) -> Path:
    training = read_training(run_dir)
    if fmt == "hf":
        return export_hf(training, out_dir)
    if fmt == "rasa":
        return export_rasa(training, out_dir, min_weight)
    raise ValueError(f"unknown export format {fmt!r} (rasa or hf)")
