"""`selflearn export --format hf|rasa`: a `training/` table of real MASSIVE utterances (en-US
and ja-JP records of alarm_set, play_music, weather_query: their text keys, intents and
annotated slots, as the labels stage publishes them) read back by the real `datasets`
library, and the Rasa files by YAML with Rasa's entity markup parsed back to the slots.
Rasa itself does not install beside selflearn's dependencies: `make rasa-check` parses a
run's export with Rasa Pro in a venv of its own (bench/rasa_check.py, README)."""
from __future__ import annotations

import re
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from selflearn.core.text import normalize_text

_SLOT = re.compile(r"\[\s*([a-z0-9_]+)\s*:\s*([^\]]+?)\s*\]")


@pytest.fixture()
def run_dir(tmp_path, massive):
    rows = []
    for locale in ("en-US", "ja-JP"):
        recs = [r for r in massive(locale, 400) if r["intent"] in ("alarm_set", "play_music", "weather_query")][:40]
        for i, r in enumerate(recs):
            slots = [{"name": m.group(1), "value": normalize_text(m.group(2))} for m in _SLOT.finditer(r["annot_utt"])]
            if i % 2:  # training/ lists a row's slots as its target was served, not in the order the text says them
                slots = slots[::-1]
            rows.append({"locale": locale, "text": normalize_text(r["utt"]), "intent": r["intent"],
                         "domain": r["scenario"], "slots": slots, "weight": 0.5 + (i % 5) / 10,
                         "label_source": "rewrite" if i % 2 else "paraphrase", "split": "dev" if i % 7 == 0 else "train"})
    df = pd.DataFrame(rows).drop_duplicates(["locale", "text"])
    run = _write_run(tmp_path / "root" / "runs" / "r1", df)
    (tmp_path / "root" / "LATEST").write_text("r1\n")
    return run, df


def _write_run(run, df, schema=None):
    """A run directory whose training/ is `df` (`schema`: the fixture's, for an empty `df`)."""
    (run / "training").mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(df, schema=schema, preserve_index=False), run / "training" / "part-0.parquet")
    (run / "_SUCCESS").write_text("")
    return run


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "selflearn.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.heavy  # about 25 s on the shared machine: datasets imports twice (CLI and test)
def test_hf_export_loads_with_datasets_as_a_classification_set(run_dir, tmp_path):
    import datasets

    run, df = run_dir
    r = _cli("export", "--run", str(run.parent.parent), "--format", "hf", "--output", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    ds = datasets.load_from_disk(str(tmp_path / "out" / "hf"))
    assert set(ds) == {"train", "validation"}
    assert len(ds["train"]) == (df["split"] == "train").sum() and len(ds["validation"]) == (df["split"] == "dev").sum()
    label = ds["train"].features["label"]
    assert isinstance(label, datasets.ClassLabel) and label.names == sorted(df["intent"].unique())
    got = ds["train"].to_pandas()
    want = df[df["split"] == "train"].set_index(["locale", "text"])
    for row in got.itertuples(index=False):
        w = want.loc[(row.locale, row.text)]
        assert label.int2str(int(row.label)) == row.intent == w["intent"]
        assert abs(row.weight - w["weight"]) < 1e-6
        assert [dict(s) for s in _as_list(row.slots)] == list(w["slots"])
        # entities: each slot's span, in text order (the fixture lists every other row's slots backwards)
        spans = [dict(e) for e in _as_list(row.entities, ("name", "start", "end"))]
        assert [e["start"] for e in spans] == sorted(e["start"] for e in spans)
        assert sorted((e["name"], row.text[e["start"]:e["end"]]) for e in spans) == sorted(
            (s["name"], s["value"]) for s in w["slots"] if s["value"] in row.text), row.text


def _as_list(slots, fields=("name", "value")):
    # datasets returns a Sequence of structs as a dict of lists or a list of dicts by version
    if isinstance(slots, dict):
        return [dict(zip(fields, vals)) for vals in zip(*(slots[f] for f in fields))]
    return list(slots)


_MARK = re.compile(r"\[([^\]]+)\]\(([a-z0-9_]+)\)")


def test_rasa_export_is_rasa_nlu_yaml_with_entities_marked(run_dir, tmp_path):
    run, df = run_dir
    from selflearn.serving.export import export

    export(run, tmp_path / "out", "rasa")
    for locale, split, name in [(loc, s, n) for loc in ("en-US", "ja-JP") for s, n in (("train", "nlu.yml"), ("dev", "test_nlu.yml"))]:
        doc = yaml.safe_load((tmp_path / "out" / "rasa" / locale / name).read_text(encoding="utf-8"))
        assert doc["version"] == "3.1" and set(doc) == {"version", "nlu"}
        seen = {}
        for block in doc["nlu"]:
            assert set(block) == {"intent", "examples"} and block["examples"].endswith("\n")
            for line in block["examples"].splitlines():
                assert line.startswith("- ")
                marked = line[2:]
                text = _MARK.sub(lambda m: m.group(1), marked)
                seen[text] = (block["intent"], [{"name": m.group(2), "value": m.group(1)} for m in _MARK.finditer(marked)])
        want = df[(df["locale"] == locale) & (df["split"] == split)]
        assert set(seen) == set(want["text"])
        for text, intent, slots in zip(want["text"], want["intent"], want["slots"]):
            assert seen[text][0] == intent
            # every slot whose value occurs in the text is marked, in order
            assert sorted(map(str, seen[text][1])) == sorted(map(str, [s for s in slots if s["value"] in text])), text


def test_rasa_export_leaves_out_rows_under_export_min_weight(run_dir, tmp_path):
    run, df = run_dir
    from selflearn.serving.export import export

    export(run, tmp_path / "o", "rasa", min_weight=0.75)  # the CLI passes Settings.export_min_weight
    doc = yaml.safe_load((tmp_path / "o" / "rasa" / "en-US" / "nlu.yml").read_text(encoding="utf-8"))
    n_examples = sum(len(b["examples"].splitlines()) for b in doc["nlu"])
    kept = df[(df["locale"] == "en-US") & (df["split"] == "train") & (df["weight"] >= 0.75)]
    assert n_examples == len(kept) < (df["locale"].eq("en-US") & df["split"].eq("train")).sum()


def test_unknown_format_is_one_line(tmp_path):
    r = _cli("export", "--run", str(tmp_path), "--format", "csv", "--output", str(tmp_path / "o"))
    assert r.returncode != 0 and "invalid choice" in r.stderr


def _records_with_slots(massive, locale: str, n: int, keep) -> list[tuple[str, list[dict]]]:
    out = []
    for r in massive(locale, 4000):
        slots = [{"name": m.group(1), "value": normalize_text(m.group(2))} for m in _SLOT.finditer(r["annot_utt"])]
        text = normalize_text(r["utt"])
        if keep(text, slots):
            out.append((text, slots))
            if len(out) >= n:
                break
    return out


def _marked(example: str) -> list[tuple[str, str]]:
    return sorted((m.group(2), m.group(1)) for m in _MARK.finditer(example))


def test_rasa_marks_every_slot_whatever_order_the_slots_are_listed_in(massive):
    """Real MASSIVE records of three or more slots, in four scripts, their slots listed
    backwards: every value is marked where the text says it (a mark per slot, none
    lost because an earlier-listed slot sits later in the text)."""
    from selflearn.serving.export import rasa_example

    def distinct_values(text, slots):
        values = [s["value"] for s in slots]
        return len(slots) >= 3 and len(set(values)) == len(values) and all(f" {v} " in f" {text} " for v in values) \
            and not any(a != b and a in b for a in values for b in values)

    for locale in ("en-US", "de-DE", "ar-SA", "hi-IN"):
        recs = _records_with_slots(massive, locale, 15, distinct_values)
        assert len(recs) >= 10, locale
        for text, slots in recs:
            example = rasa_example(text, slots[::-1])
            assert _MARK.sub(lambda m: m.group(1), example) == text
            assert _marked(example) == sorted((s["name"], s["value"]) for s in slots), (locale, example)


def _against_kana(text: str, value: str) -> str:
    """`text` with the spaces around `value` dropped where its neighbour is kana or kanji."""
    from selflearn.core.text import is_unspaced_char

    padded = f" {text} "
    at = padded.find(f" {value} ")
    left, right = padded[:at].strip(), padded[at + len(value) + 2:].strip()
    sep_left = "" if left and is_unspaced_char(left[-1]) else " "
    sep_right = "" if right and is_unspaced_char(right[0]) else " "
    return (left + sep_left + value + sep_right + right).strip()


def test_rasa_marks_a_latin_value_written_against_japanese(massive):
    """A `pattern` row fills a ja-JP carrier learned with kana values with a Latin one, so
    the value sits against kana with no space ("uberの意味を教えてくれますか" in the default
    log's training/): it is still a word there, and marked. MASSIVE's ja-JP records space
    their Latin words ("b b c のニュースを教えて"); the test joins them as such a fill does."""
    from selflearn.serving.export import rasa_example

    def latin_against_kana(text, slots):
        return any(s["value"].isascii() and f" {s['value']} " in f" {text} " and _against_kana(text, s["value"]) != text
                   for s in slots)

    recs = _records_with_slots(massive, "ja-JP", 10, latin_against_kana)
    assert len(recs) >= 5
    for text, slots in recs:
        joined = text
        for s in slots:
            if s["value"].isascii() and f" {s['value']} " in f" {joined} ":
                joined = _against_kana(joined, s["value"])
        example = rasa_example(joined, slots)
        assert _MARK.sub(lambda m: m.group(1), example) == joined
        assert _marked(example) == sorted((s["name"], s["value"]) for s in slots), example


def test_hf_export_of_a_run_without_dev_rows_loads_and_replaces_the_earlier_export(run_dir, tmp_path, capsys):
    """A small run often has no `dev` row: its `validation` split is empty and must still
    load (datasets saves an empty split with no shard, and `load_from_disk` then fails).
    Exported into a folder that holds an earlier export, it replaces it whole."""
    import datasets

    from selflearn.serving.export import export

    run, df = run_dir
    export(run, tmp_path / "out", "hf")
    (tmp_path / "out" / "hf" / "validation" / "data-00001-of-00002.arrow").write_text("an earlier export's shard")
    train_only = df[df["split"] == "train"]
    run2 = _write_run(tmp_path / "r2", train_only)
    capsys.readouterr()
    export(run2, tmp_path / "out", "hf")
    ds = datasets.load_from_disk(str(tmp_path / "out" / "hf"))
    assert set(ds) == {"train", "validation"}
    assert len(ds["train"]) == len(train_only) and len(ds["validation"]) == 0
    assert ds["validation"].features == ds["train"].features
    assert ds["validation"].features["label"].names == sorted(train_only["intent"].unique())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["hf"]  # no temporary folder left
    assert not (tmp_path / "out" / "hf" / "validation" / "data-00001-of-00002.arrow").exists()
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("selflearn")]  # datasets' progress bars apart
    assert said == ["selflearn export: split validation is empty (the run has no dev row)"]


@pytest.mark.parametrize("fmt", ["rasa", "hf"])
def test_export_of_a_run_without_training_rows_is_refused_in_one_line(run_dir, tmp_path, fmt):
    run, df = run_dir
    schema = pa.Table.from_pandas(df, preserve_index=False).schema
    empty = _write_run(tmp_path / "empty", df.iloc[:0], schema=schema)
    r = _cli("export", "--run", str(empty), "--format", fmt, "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    assert r.stderr.splitlines() == ["selflearn export: the run's training/ has no row: nothing to export"]
    assert not (tmp_path / "o").exists()


def _rasa_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_rasa_export_replaces_the_earlier_export_whole(run_dir, tmp_path, monkeypatch):
    """A second export into the same folder describes the second run only: no `test_nlu.yml`
    or locale folder of the first survives. A crash while writing leaves the earlier export."""
    import selflearn.serving.export as export_module

    run, df = run_dir
    out = tmp_path / "out"
    export_module.export(run, out, "rasa")
    assert _rasa_files(out) == ["rasa/en-US/nlu.yml", "rasa/en-US/test_nlu.yml", "rasa/ja-JP/nlu.yml", "rasa/ja-JP/test_nlu.yml"]
    first = {f: (out / f).read_text(encoding="utf-8") for f in _rasa_files(out)}

    en_train = df[(df["locale"] == "en-US") & (df["split"] == "train")]
    run2 = _write_run(tmp_path / "r2", en_train)
    calls = []
    real = export_module._rasa_yaml

    def crash_on_second(rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise OSError("disk full")
        return real(rows)

    monkeypatch.setattr(export_module, "_rasa_yaml", crash_on_second)
    all_train = _write_run(tmp_path / "r3", df.assign(split="train"))
    with pytest.raises(OSError):
        export_module.export(all_train, out, "rasa")  # dies after writing en-US/nlu.yml of the new export
    assert {f: (out / f).read_text(encoding="utf-8") for f in _rasa_files(out)} == first
    assert sorted(p.name for p in out.iterdir()) == ["rasa"]
    monkeypatch.setattr(export_module, "_rasa_yaml", real)

    export_module.export(run2, out, "rasa")
    assert _rasa_files(out) == ["rasa/en-US/nlu.yml"]
    assert sorted(p.name for p in out.iterdir()) == ["rasa"]  # no temporary folder left
    doc = yaml.safe_load((out / "rasa" / "en-US" / "nlu.yml").read_text(encoding="utf-8"))
    assert sum(len(b["examples"].splitlines()) for b in doc["nlu"]) == len(en_train)


# Rasa's own reading of an example's entity markup (rasa/shared/nlu/training_data/entities_parser.py,
# ENTITY_REGEX of Rasa 3.x): `[text](entity)` or `[text](entity:synonym)`
_RASA_ENTITY = re.compile(r"\[(?P<entity_text>[^\]]+?)\](\((?P<entity>[^:)]+?)(?:\:(?P<value>[^)]+))?\)|"
                          r"\{(?P<entity_dict>[^}]+?)\}|\[(?P<list_entries>.*?)\])")
_RASA_OK = re.compile(r"[A-Za-z0-9_.-]+")


def test_rasa_leaves_out_rows_whose_names_rasa_would_misread(run_dir, tmp_path, capsys):
    """The log puts no shape on slot names or intents. The fixture's real MASSIVE rows get
    names Rasa reads otherwise (`sys:time`: entity `sys` with synonym `time`; `time)` ends
    the markup early; `music/play_music`: a retrieval intent) and names it reads as written
    (`sys.time`, `time-of-day`): the first rows are left out and counted in one stderr line,
    the others exported with their names unchanged, read back with Rasa's own entity regex."""
    from selflearn.serving.export import export

    run, df = run_dir
    df = df.copy()
    names = iter(["sys:time", "sys.time", "time)", "time-of-day", "ti(me", "alarm.time", "time]"] * 20)
    df["slots"] = [[{"name": next(names) if s["name"] == "time" and intent == "alarm_set" else s["name"], "value": s["value"]}
                    for s in slots] for intent, slots in zip(df["intent"], df["slots"])]
    df["intent"] = ["music/play_music" if any(s["name"] == "music_genre" for s in slots) else intent
                    for intent, slots in zip(df["intent"], df["slots"])]
    run2 = _write_run(tmp_path / "r2", df)

    def readable(row):
        return _RASA_OK.fullmatch(row.intent) and all(_RASA_OK.fullmatch(s["name"]) for s in row.slots if s["value"] in row.text)

    ok = [bool(readable(row)) for row in df.itertuples()]
    n_bad = ok.count(False)
    kept = df[ok]
    assert n_bad >= 8 and (kept["slots"].map(lambda ss: any(s["name"] in ("sys.time", "time-of-day") for s in ss))).sum() >= 2
    export(run2, tmp_path / "out", "rasa")
    seen = {}
    for f in sorted((tmp_path / "out" / "rasa").rglob("*.yml")):
        for block in yaml.safe_load(f.read_text(encoding="utf-8"))["nlu"]:
            assert "/" not in block["intent"]
            for line in block["examples"].splitlines():
                marked = line[2:]
                text = _RASA_ENTITY.sub(lambda m: m.group("entity_text"), marked)
                ents = [(m.group("entity"), m.group("entity_text"), m.group("value")) for m in _RASA_ENTITY.finditer(marked)]
                seen[(f.parent.name, text)] = (block["intent"], sorted(ents, key=str))
    assert set(seen) == set(zip(kept["locale"], kept["text"]))
    for row in kept.itertuples():
        assert seen[(row.locale, row.text)] == (row.intent, sorted(
            [(s["name"], s["value"], None) for s in row.slots if s["value"] in row.text], key=str)), row.text
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"selflearn export: left out {n_bad} of {len(df)} rows"), err
