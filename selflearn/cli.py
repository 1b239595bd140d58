"""The `selflearn` command: run, simulate, evaluate, forget, serve, export (contract section 5).

Every failure exits non-zero with one line on stderr; tracebacks only with
SELFLEARN_DEBUG=1."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path


def _setup_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


def progress_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    start = time.perf_counter()

    class Elapsed(logging.Formatter):
        def format(self, record):
            return f"[{time.perf_counter() - start:7.1f}s] {record.getMessage()}"

    handler.setFormatter(Elapsed())
    logger = logging.getLogger("selflearn")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def cmd_run(args) -> int:
    from selflearn.config import load_settings

    from selflearn.run.publish import check_output_root, ensure_root_free, wait_for_root
    from selflearn.spark.readers import check_input

    from selflearn.core.controls import load_controls
    from selflearn.run.gate import GATE_EXIT_CODE, gate_message

    settings = load_settings(args.config)  # fail fast, before Spark or Prefect start
    load_controls(settings.controls_file)
    check_input(args.input)
    check_output_root(args.output)  # a file, below a file, read-only: one line (exit 2)
    if args.wait:  # a busy ROOT: wait for its run to finish, up to --wait seconds
        wait_for_root(args.output, args.wait, say=lambda line: print(f"selflearn run: {line}", file=sys.stderr, flush=True))
    else:  # a busy ROOT: refuse with one line (exit 2)
        ensure_root_free(args.output)
    progress_logging()
    if args.prefect:  # the same stages as a Prefect flow (a temporary local server without PREFECT_API_URL)
        from pipelines.mine_flow import mine

        final = mine(args.input, args.output, args.config, force_publish=args.force_publish)
    else:  # the stages called directly: no Prefect server to start, no Prefect log lines
        from selflearn.run.runner import Run, run_all

        final = run_all(Run(input_path=args.input, output_root=args.output, settings=settings,
                            force_publish=args.force_publish))
    print(final)
    print(Path(final) / "report.html")  # last: the page to open first (README, "Where to look")
    manifest = json.loads((Path(final) / "manifest.json").read_text(encoding="utf-8"))
    held = gate_message(manifest, Path(final))
    if held:  # the run is complete but LATEST stayed on the previous run
        print(f"selflearn run: {held}", file=sys.stderr)
        return GATE_EXIT_CODE
    return 0


def cmd_simulate(args) -> int:
    import yaml

    from selflearn.simulate import simulate

    kwargs = {}
    if args.config:  # any SimConfig knob, e.g. supported_share: 0.6
        with open(args.config, encoding="utf-8") as fh:
            kwargs.update(yaml.safe_load(fh) or {})
    if args.data_dir:
        kwargs["data_dir"] = args.data_dir
    if args.users is not None:
        kwargs["users"] = args.users
    if args.locales:
        kwargs["locales"] = [x.strip() for x in args.locales.split(",") if x.strip()]
    if args.seed is not None:
        kwargs["seed"] = args.seed
    progress_logging()
    from selflearn.run.runner import heartbeat

    with heartbeat("simulate", 25.0, logging.getLogger("selflearn").info):  # building the world, writing files
        summary = simulate(args.output, **kwargs)
    print(f"simulated {summary.get('turns', '?')} turns of {summary.get('users', '?')} users into {args.output}")
    return 0


def cmd_evaluate(args) -> int:
    from selflearn.evaluation.evaluate import evaluate_cli

    return evaluate_cli(args.run, args.sim)


def cmd_forget(args) -> int:
    from selflearn.run.forget import FORGET_NOT_FOUND_EXIT, forget_user

    if not args.user.strip():
        raise ValueError("--user must not be empty")
    r = forget_user(args.output, args.user, init=args.init, purge_unlinked=args.purge_unlinked)
    unlinked = ""
    if r["unlinked_runs"]:
        unlinked = (f"; {len(r['unlinked_runs'])} published runs (the oldest {r['unlinked_runs'][0]}) hold turns of days that "
                    f"left the evidence window, which nothing links to a user any more: the user's may be among them "
                    f"(--purge-unlinked removes those runs' turns/ and rephrase_pairs/)")
    if r["purged_runs"]:
        unlinked = f"; turns/ and rephrase_pairs/ removed from {len(r['purged_runs'])} runs that covered days past the evidence window"
    if not r["found"]:  # recorded anyway: a later ingest of an old log still drops the user
        print(f"selflearn forget: user not found in the retained evidence of {args.output}: nothing linked to the user "
              f"removed; recorded as forgotten, later ingests drop the user's rows{unlinked} "
              f"(exit {FORGET_NOT_FOUND_EXIT})", file=sys.stderr)
        return FORGET_NOT_FOUND_EXIT
    print(f"forgot one user: {r['evidence_rows']} evidence rows in {r['days']} days, {r['tail_turns']} session-tail "
          f"turns, {r['quarantine_rows']} quarantined rows, {r['cached_keys']} cached embeddings, "
          f"{r['published_rows']} rows of operator tables in {r['published_runs']} published runs removed; "
          f"later ingests drop the user's rows{unlinked}")
    return 0


def _port(text: str) -> int:
    """A TCP port, 1-65535: the socket layer would take 99999 as 99999 mod 65536 and listen
    somewhere else than the service says."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer 1-65535, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be an integer 1-65535, got {port}")
    return port


def cmd_serve(args) -> int:
    from selflearn.config import load_settings
    from selflearn.serving.server import make_server

    settings = load_settings(args.config)
    if not Path(args.output).is_dir():
        raise FileNotFoundError(f"no such ROOT: {args.output}")
    progress_logging()
    server = make_server(args.output, host=args.host, port=args.port, poll_s=settings.serve_poll_s)
    rewriter = server.config.app.state.rewriter
    if rewriter.current is None:  # healthz answers 503 until LATEST names a loadable run
        print(f"selflearn serve: no run loaded yet from {args.output}; waiting for LATEST", file=sys.stderr)
    print(f"selflearn serve: http://{args.host}:{args.port}/rewrite", file=sys.stderr)
    server.run()
    return 0


def cmd_export(args) -> int:
    from selflearn.config import load_settings
    from selflearn.evaluation.evaluate import resolve_run
    from selflearn.serving.export import export

    settings = load_settings(args.config)
    path = export(resolve_run(args.run), args.output, args.format, settings.export_min_weight)
    print(path)
    return 0


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 7 * 86400:
        raise argparse.ArgumentTypeError(f"{value:g} s is outside 0 .. {7 * 86400} (a week)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selflearn", description="Self-learning utterance mining for voice assistants")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="mine an interaction log into ROOT/runs/<run_id>/")
    r.add_argument("--input", required=True, help="parquet file/dir (hive partitions ok) or JSON Lines (.jsonl, .jsonl.gz)")
    r.add_argument("--output", required=True, help="output ROOT")
    r.add_argument("--config", help="YAML settings file")
    r.add_argument("--force-publish", action="store_true",
                   help="move LATEST to this run even if the publish gate fails (otherwise exit code 3)")
    r.add_argument("--prefect", action="store_true",
                   help="run the stages as the Prefect flow selflearn-mine (as deployments do) instead of directly")
    r.add_argument("--wait", type=_non_negative_seconds, default=0.0, metavar="SECONDS",
                   help="when another run holds ROOT, wait up to this long for it to finish (default 0: refuse at once, exit 2)")
    r.set_defaults(fn=cmd_run)
    s = sub.add_parser("simulate", help="write a simulated log with its ground truth")
    s.add_argument("--output", required=True)
    s.add_argument("--users", type=int)
    s.add_argument("--locales", help="comma-separated, e.g. en-US,de-DE,ja-JP")
    s.add_argument("--seed", type=int)
    s.add_argument("--config", help="YAML file of simulator knobs (selflearn.simulate.SimConfig fields)")
    s.add_argument("--data-dir", help="folder of MASSIVE <locale>.jsonl.gz files (default: shared/data/massive/locales beside the checkout)")
    s.set_defaults(fn=cmd_simulate)
    e = sub.add_parser("evaluate", help="judge a run against a simulation's truth")
    e.add_argument("--run", required=True, help="ROOT (its LATEST run) or a run directory")
    e.add_argument("--sim", required=True, help="the folder `selflearn simulate --output DIR` wrote (log/, truth.parquet, world/)")
    e.set_defaults(fn=cmd_evaluate)
    f = sub.add_parser("forget", help="remove a user's evidence from state, caches, quarantine and published operator tables "
                                        "(exit 4: the user had no row in ROOT, recorded anyway)")
    f.add_argument("--user", required=True)
    f.add_argument("--output", required=True, help="an existing selflearn ROOT")
    f.add_argument("--init", action="store_true", help="allow a new or empty ROOT: record the user before its first run")
    f.add_argument("--purge-unlinked", action="store_true",
                   help="also remove turns/ and rephrase_pairs/ of published runs that covered days past the evidence "
                        "window (their turns can no longer be linked to a user)")
    f.set_defaults(fn=cmd_forget)
    v = sub.add_parser("serve", help="answer GET /rewrite from the run ROOT/LATEST names (follows LATEST)")
    v.add_argument("--output", required=True, help="output ROOT of selflearn run")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=_port, default=8080, help="TCP port, 1-65535 (default 8080)")
    v.add_argument("--config", help="YAML settings file (serve_poll_s)")
    v.set_defaults(fn=cmd_serve)
    x = sub.add_parser("export", help="write training/ as a Rasa NLU project per locale or a Hugging Face dataset")
    x.add_argument("--run", required=True, help="ROOT (its LATEST run) or a run directory")
    x.add_argument("--format", required=True, choices=["rasa", "hf"])
    x.add_argument("--output", required=True, help="folder to write DIR/rasa/<locale>/ or DIR/hf/ into")
    x.add_argument("--config", help="YAML settings file (export_min_weight)")
    x.set_defaults(fn=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    _setup_env()
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        print("selflearn: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, never a traceback, unless debugging
        if os.environ.get("SELFLEARN_DEBUG"):
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"selflearn {args.command}: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
