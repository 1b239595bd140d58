"""What Rasa itself reads from `selflearn export --format rasa`. Run it with the Python of
a Rasa install, not selflearn's (Rasa Pro 3.21 is the first Rasa release for Python 3.11;
`make rasa-check` builds that venv apart, `.venv-rasa`, and calls bench/rasa_check.py,
which runs this file there and compares what it wrote with the run's `training/`):

    .venv-rasa/bin/python bench/rasa_read.py EXPORT_DIR/rasa OUT.json

Every `<locale>/nlu.yml` and `<locale>/test_nlu.yml` goes through Rasa's own loader
(`rasa.shared.nlu.training_data.loading.load_data`, what `rasa train nlu` reads its data
with); OUT.json holds each example as Rasa parsed it: locale, file, text, intent, and the
entities with their offsets. Imports nothing of selflearn."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def read_export(rasa_dir: Path) -> dict:
    import rasa
    from rasa.shared.nlu.training_data.loading import load_data

    files = sorted(rasa_dir.glob("*/*.yml"))
    examples = []
    for f in files:
        data = load_data(str(f))
        for m in data.training_examples:
            examples.append({
                "locale": f.parent.name, "file": f.name, "text": m.get("text"), "intent": m.get("intent"),
                "entities": [{"entity": e["entity"], "value": e["value"], "start": e["start"], "end": e["end"]}
                             for e in m.get("entities") or []],
            })
    return {"rasa_version": rasa.__version__, "files": len(files), "examples": examples}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: rasa_read.py EXPORT_DIR/rasa OUT.json", file=sys.stderr)
        return 2
    out = read_export(Path(argv[0]))
    Path(argv[1]).write_text(json.dumps(out, ensure_ascii=False), encoding="utf-8")
    print(f"Rasa {out['rasa_version']} read {len(out['examples'])} examples from {out['files']} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
