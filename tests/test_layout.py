"""The layers of the package (README, "Where things live"): the pure core imports no
Spark and no run/encoder layer, so every rule in it is testable alone."""
import pkgutil
import subprocess
import sys
from pathlib import Path

import selflearn.core

CORE = sorted(m.name for m in pkgutil.iter_modules(selflearn.core.__path__))


def test_the_core_imports_no_spark_and_no_outer_layer():
    code = ("import sys\n" + "".join(f"import selflearn.core.{m}\n" for m in CORE) +
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'pyspark' or "
            "m.startswith(('selflearn.spark', 'selflearn.run', 'selflearn.serving', 'selflearn.evaluation')))\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"the core pulled in: {out.stdout.strip()}"
    assert {"transitions", "defects", "graph", "patterns", "rewrites", "labels", "sessions"} <= set(CORE)
