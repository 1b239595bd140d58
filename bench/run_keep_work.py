"""Every stage of a run (as `selflearn run`), keeping a copy of the work directory before
publish (for looking at pattern candidates afterwards). Usage: INPUT ROOT KEEP_DIR [CONFIG]."""
import shutil, sys, time
from pathlib import Path
from selflearn.config import load_settings
from selflearn.run.runner import Run
from selflearn.run.stages import STAGE_NAMES



def main() -> None:
    inp, root, keep = sys.argv[1], sys.argv[2], sys.argv[3]
    run = Run(inp, root, load_settings(sys.argv[4] if len(sys.argv) > 4 else None), progress=lambda m: print(m, flush=True))
    run.start()
    try:
        for name in STAGE_NAMES:
            if name == "publish":
                shutil.copytree(run.dirs.work, keep, dirs_exist_ok=True)
            run.stage(name)
    finally:
        run.finish()
    print("TIMINGS", run.timings)
    print("PATTERNS", run.counts.get("patterns"))


if __name__ == "__main__":
    main()
