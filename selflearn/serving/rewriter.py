"""The runtime side of selflearn: apply a published run's rewrites to live requests.

    from selflearn.serving.rewriter import Rewriter
    rw = Rewriter.from_root("ROOT")          # loads the run ROOT/LATEST names
    rw.start_watching()                      # follow LATEST (a daemon thread)
    rw.rewrite("en-US", "Wake me up at 7 am on Friday!")
    # {"locale": "en-US", "key": "wake me up at 7 am on friday", "rewrite": ..., "kind": ...,
    #  "confidence": ..., "run_id": ...}

A request is keyed exactly as the pipeline keyed the log (`selflearn.core.keys.text_key`, with
the PII settings of the run being served, read from its manifest) and answered per
contract section 4.1 (`selflearn.core.rewrite_apply`: exact first, then the most specific
pattern, from an index built once per run).

Following LATEST: a new run is loaded aside (tables read, patterns compiled) and swapped
in with one reference assignment, so a request, which reads that reference once, sees
one run, never a mix. A run that cannot be loaded (no `_SUCCESS`, a table that is not
readable parquet or lacks a column), or a LATEST that names none (a directory, not UTF-8,
not a run id), is refused with one log line and the old run keeps serving; it is tried
again only when LATEST changes.

Loading aside without stalling requests: a load allocates a few hundred thousand objects,
and CPython's cyclic garbage collector, triggered by those allocations, would scan the
whole heap (the served run included) while holding the GIL, stopping the request thread
for hundreds of milliseconds on a busy machine. So a load runs with the collector paused
and the GIL switch interval shortened (`_quiet_load`), and once a run is swapped in,
`gc.freeze()` moves every live object, the run's index among them, out of the collector's
reach: later collections scan only what requests allocate. A frozen object is still freed
by reference counting when its run is dropped (the index holds no reference cycles), so
swapping runs does not grow memory. Dropping the old run in one go would also stop the
request thread (freeing its ~10^5 objects is one uninterruptible step), so once no request
holds it any more it is taken apart a slice of objects at a time (`_release_in_slices`).
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from selflearn.config import Settings
from selflearn.core.keys import key_fingerprint, text_key
from selflearn.core.text import CONTROL_CHARS, canonical_locale, is_empty_utterance
from selflearn.core.rewrite_apply import Applied, RewriteIndex

log = logging.getLogger("selflearn.serving.rewriter")

# The ingest's BCP-47 shape (contract section 1): a locale the pipeline would quarantine
# can never have a rewrite.
LOCALE_SHAPE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*")
_COLUMNS = ["locale", "source", "target", "confidence"]
# GIL switch interval while a run loads beside live requests: the request thread waits at
# most about this long for the GIL each time it wants it (CPython's default is 5 ms).
LOAD_SWITCH_INTERVAL_S = 0.0005
# How long a swap waits for requests that read the old run before it to finish with it
# before taking it apart; one still held after that is merely let go (freed by its holder).
RELEASE_WAIT_S = 5.0


def _release_in_slices(stack: list, slice_objects: int = 2000) -> int:
    """Free the objects in `stack` (the caller's only references to them, handed over in
    this list) and what only they reference, a slice of objects at a time, so no single
    step holds the GIL for long. A container is emptied only when nothing else references
    it (its reference count says so), so an object still shared with live code is merely
    let go. Returns the number of objects visited."""
    n = 0
    while stack:
        o = stack.pop()
        if sys.getrefcount(o) == 2:  # `o` and getrefcount's argument: ours alone
            t = type(o)
            if t is dict:
                stack.extend(o.values())
                o.clear()
            elif t is list or t is set:
                stack.extend(o)
                o.clear()
            elif t is tuple:
                stack.extend(o)
            elif t.__module__.startswith("selflearn.") and hasattr(o, "__dict__"):
                stack.append(vars(o))
        o = None
        n += 1
        if n % slice_objects == 0:
            time.sleep(0)  # a point where the request thread takes the GIL
    return n


@contextlib.contextmanager
def _quiet_load():
    """Collector paused and a short GIL switch interval for the duration of one load."""
    was_enabled, interval = gc.isenabled(), sys.getswitchinterval()
    gc.disable()
    sys.setswitchinterval(min(interval, LOAD_SWITCH_INTERVAL_S))
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        if was_enabled:
            gc.enable()


class BadRequest(ValueError):
    """A request that cannot be answered as asked; the message says why (one line)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class NotLoaded(RuntimeError):
    """No run has been loaded yet (no LATEST, or every run so far was refused)."""


class RunRefused(RuntimeError):
    """A run that must not be served; the message says why."""


@dataclass(frozen=True)
class LoadedRun:
    """One published run, ready to answer: immutable once built, swapped as a whole."""

    run_id: str
    path: Path
    index: RewriteIndex
    scrub_pii: bool
    pii_min_digits: int
    max_text_chars: int
    published_at: float  # mtime of _SUCCESS (epoch seconds)
    loaded_at: float
    n_exact: int
    n_patterns: int

    def key(self, text: str) -> str:
        return text_key(text, self.scrub_pii, self.pii_min_digits)

    def answer(self, locale: str, text: str) -> dict:
        locale = canonical_locale(locale)  # as ingest keyed it: "en-us" asks en-US's rewrites
        key = self.key(text)
        hit: Applied | None = self.index.lookup(locale, key) if key else None
        return {
            "locale": locale, "key": key,
            "rewrite": hit.rewrite if hit else None,
            "kind": hit.kind if hit else None,
            "confidence": hit.confidence if hit else None,
            "run_id": self.run_id,
        }


def _read_table(path: Path, name: str):
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable table refuses the run
        raise RunRefused(f"{name}/ is not readable parquet ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    missing = [c for c in _COLUMNS if c not in table.column_names]
    if missing:
        raise RunRefused(f"{name}/ lacks column(s) {', '.join(missing)}")
    return table.select(_COLUMNS).to_pandas()


def load_run(run_dir: str | Path) -> LoadedRun:
    """Read and index one run directory; RunRefused when it must not be served."""
    run_dir = Path(run_dir)
    success = run_dir / "_SUCCESS"
    if not success.is_file():
        raise RunRefused(f"run {run_dir.name} has no _SUCCESS (incomplete or not a run)")
    if not (run_dir / "rewrites").exists():
        raise RunRefused(f"run {run_dir.name} has no rewrites/")
    rewrites = _read_table(run_dir / "rewrites", "rewrites")
    # rewrite_patterns/ is published from contract v3 on; a run without it has no patterns.
    patterns = _read_table(run_dir / "rewrite_patterns", "rewrite_patterns") if (run_dir / "rewrite_patterns").exists() else None
    defaults = Settings()
    config: dict = {}
    privacy: dict = {}
    manifest = run_dir / "manifest.json"
    if manifest.is_file():
        try:
            loaded = json.loads(manifest.read_text(encoding="utf-8"))
            config, privacy = loaded.get("config") or {}, loaded.get("privacy") or {}
        except (ValueError, AttributeError):
            raise RunRefused(f"run {run_dir.name} has an unreadable manifest.json") from None
    made_with, serving_with = privacy.get("key_fingerprint"), key_fingerprint()
    if made_with != serving_with:
        # served all the same: most keys agree, and refusing would stop every rewrite
        log.warning("selflearn serve: run %s keyed its log with %s, this service keys with code %s: "
                    "a request may be keyed otherwise than the run's own texts (rerun the pipeline with this "
                    "version, or serve with the one that made the run)", run_dir.name,
                    f"code {made_with}" if made_with else "code of unknown version (no privacy.key_fingerprint)",
                    serving_with)
    index = RewriteIndex.from_frames(rewrites, patterns)
    return LoadedRun(
        run_id=run_dir.name, path=run_dir, index=index,
        # keys must be made with the settings the run made its keys with
        scrub_pii=bool(config.get("scrub_pii", defaults.scrub_pii)),
        pii_min_digits=int(config.get("pii_min_digits", defaults.pii_min_digits)),
        max_text_chars=int(config.get("max_utterance_chars", defaults.max_utterance_chars)),
        published_at=success.stat().st_mtime, loaded_at=time.time(),
        n_exact=len(index.exact), n_patterns=index.n_patterns,
    )


class Rewriter:
    """The rewrites of the run ROOT/LATEST names, following LATEST when asked to."""

    def __init__(self, root: str | Path, max_text_chars: int | None = None, freeze_gc: bool = True):
        self.root = Path(root)
        # gc.freeze() after each swap (module docstring); False leaves the process's
        # collector alone (a host process that manages gc itself)
        self.freeze_gc = freeze_gc
        self.current: LoadedRun | None = None
        self.max_text_chars = max_text_chars  # None: the served run's max_utterance_chars
        self.refused: dict[str, str] = {}  # run_id -> why, for the LATEST value last refused
        self.n_swaps = 0
        self.n_refused = 0
        self._lock = threading.Lock()  # one load at a time; requests never take it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_root(cls, root: str | Path, **kwargs) -> "Rewriter":
        """A Rewriter with the run LATEST names loaded (if any can be: healthz says so)."""
        rw = cls(root, **kwargs)
        rw.refresh()
        return rw

    def _read_latest(self) -> tuple[str | None, str | None]:
        """(what LATEST holds, None); (None, None) when there is no LATEST; (a stand-in for
        what it holds, why) when LATEST cannot be read as text: a directory, not UTF-8, or
        unreadable. The stand-in keys `refused`, so one such LATEST is refused once."""
        try:
            raw = (self.root / "LATEST").read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None, None
        except IsADirectoryError:
            return "LATEST/", "LATEST is a directory, not a file naming a run"
        except OSError as exc:
            return f"LATEST ({type(exc).__name__})", f"LATEST is not readable ({type(exc).__name__}: {exc.strerror or exc})"
        try:
            return raw.decode("utf-8").strip() or None, None
        except UnicodeDecodeError:
            shown = raw.strip().decode("utf-8", "backslashreplace")
            return shown, f"LATEST is not valid UTF-8 ({shown[:100]!r})"

    def latest_id(self) -> str | None:
        """The run id LATEST holds; None without a LATEST or when it cannot be read as text."""
        run_id, why = self._read_latest()
        return None if why else run_id

    def refresh(self) -> bool:
        """Load the run LATEST names if it is not the one serving; True when swapped."""
        with self._lock, _quiet_load():  # load, swap, freeze and release: no collection in between
            run_id, why = self._read_latest()
            if run_id is None or (self.current is not None and self.current.run_id == run_id) or run_id in self.refused:
                return False
            return self._load_and_swap(run_id, why)

    def _load_and_swap(self, run_id: str, unreadable: str | None = None) -> bool:
        """`unreadable`: why LATEST names no run (`_read_latest`); `run_id` then stands for it."""
        try:
            if unreadable:
                raise RunRefused(unreadable)
            if "/" in run_id or run_id in (".", ".."):
                raise RunRefused(f"LATEST holds {run_id!r}, not a run id")
            loaded = load_run(self.root / "runs" / run_id)
        except RunRefused as exc:
            self.refused = {run_id: str(exc)}
            self.n_refused += 1
            serving = self.current.run_id if self.current else "nothing"
            if unreadable:
                log.warning("selflearn serve: refused LATEST: %s; still serving %s", exc, serving)
            else:
                log.warning("selflearn serve: refused run %s: %s; still serving %s", run_id, exc, serving)
            return False
        self.refused = {}
        old, self.current = self.current, loaded  # the swap: one reference assignment
        self.n_swaps += 1
        if self.freeze_gc:
            gc.freeze()  # the new run (and all else alive) out of the collector's scans
        log.info("selflearn serve: serving run %s (%d exact rewrites, %d patterns)", run_id, loaded.n_exact, loaded.n_patterns)
        del loaded
        if old is not None:
            # a request that read the old run before the swap finishes with it first
            deadline = time.monotonic() + RELEASE_WAIT_S
            while sys.getrefcount(old) > 2 and time.monotonic() < deadline:
                time.sleep(0.002)
            handed = [old]
            del old
            _release_in_slices(handed)
        return True

    def start_watching(self, poll_s: float = 1.0) -> None:
        """Poll LATEST every `poll_s` seconds in a daemon thread."""
        if self._thread is not None:
            return

        def loop():
            while not self._stop.wait(poll_s):
                try:
                    self.refresh()
                except Exception:  # noqa: BLE001 - the watcher must outlive any surprise
                    log.exception("selflearn serve: reloading failed; still serving the old run")

        self._thread = threading.Thread(target=loop, name="selflearn-latest-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def check(self, locale, text) -> None:
        """BadRequest unless (locale, text) is a request the pipeline could have keyed."""
        if locale is None or locale == "":
            raise BadRequest("missing query parameter 'locale'")
        if text is None:
            raise BadRequest("missing query parameter 'text'")
        if not isinstance(locale, str) or LOCALE_SHAPE.fullmatch(locale) is None:
            raise BadRequest("locale is not BCP-47 shaped (e.g. en-US)")
        if not isinstance(text, str):
            raise BadRequest(f"text is not a string (got {type(text).__name__})")
        run = self.current
        limit = self.max_text_chars or (run.max_text_chars if run else Settings().max_utterance_chars)
        if len(text) > limit:
            raise BadRequest(f"text longer than {limit} characters", status=413)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("text is not valid Unicode (a lone surrogate)") from None
        # The pipeline never keys such a turn (ingest quarantines it), so no rewrite can be
        # learned for it; a 200 with a null rewrite would hide a broken client.
        if CONTROL_CHARS.search(text) is not None:
            raise BadRequest("text holds a control character (ingest quarantines such a turn: bad_encoding)")
        if is_empty_utterance(text):
            raise BadRequest("text is empty or only punctuation (ingest quarantines such a turn: empty_utterance)")

    def rewrite(self, locale, text) -> dict:
        """The contract's answer for one request, from one run (NotLoaded before any)."""
        self.check(locale, text)
        run = self.current  # read once: the whole answer comes from this run
        if run is None:
            raise NotLoaded("no run loaded yet")
        return run.answer(locale, text)
