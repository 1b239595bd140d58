"""The GPU branches on a machine that has a GPU: run them, check them, time them.

``python -m bench.gpu_check --model DIR --keys FILE --check-texts FILE --ref NPY --out DIR``

What it does, each step recorded in ``gpu_check.json`` (written after every step, so a run
stopped early still says what it saw):

1. the plan ``devices.choose_devices`` makes with default settings (expected: CUDA, torch
   fp16, large batches, kNN by torch top-k unless faiss has GPUs);
2. the pipeline's encoder (``embed.load_encoder``) on the GPU against the same model in fp32:
   cosine agreement with vectors made on a CPU elsewhere (``--ref``, the original fp32
   weights) and with this machine's CPU;
3. throughput: the GPU encoder against a plain ``SentenceTransformer.encode`` on this
   machine's CPU (every core, fp32), on the same keys;
4. kNN: ``paraphrase.knn_pairs`` with the GPU engine against the CPU FAISS engine on the same
   vectors (20k and all keys): time ratio, and recall@10 of both against exact search.

The development machine has no GPU, so this runs on a lent one; the inputs travel with it.
``python -m bench.gpu_check --prepare DIR`` builds them here from the bundled model and
MASSIVE (docs/performance.md, "GPU", has the whole recipe, wheels included).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import lzma
import os
import statistics
import time
from pathlib import Path


def _now() -> float:
    return time.perf_counter()


def _say(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _read_lines(path: Path) -> list[str]:
    if path.suffix == ".xz":
        with lzma.open(path, "rt", encoding="utf-8") as fh:
            raw = fh.read()
    else:
        raw = path.read_text(encoding="utf-8")
    return [t for t in raw.split("\n") if t]


def _recall_at_k(rows, found, exact_I, exact_D, k: int, eps: float = 1e-5) -> tuple[float, float]:
    """(by id, tie-aware): mean share of each row's exact k nearest (self excluded) among its
    found neighbours ``found[i]`` = [(id, cosine)]. Tie-aware counts an exact neighbour whose
    cosine ties the found k-th as found: identical vectors (an English model maps many
    non-Latin keys to the same [UNK] tokens) make ids at the k-th place arbitrary.

    The same tie rule as ``paraphrase._recall_at_k`` (which calibrates IVF on one engine), but
    over neighbour lists, with the by-id figure too, and a looser ``eps``: here the two sides
    come from different engines (GPU and CPU sums differ in the last bits)."""
    by_id = tied = 0
    for row, got, ids, sims in zip(rows, found, exact_I, exact_D):
        want = [(j, s) for j, s in zip(ids, sims) if j != row][:k]
        ids_got = {j for j, _ in got}
        kth = min((c for _, c in got), default=float("inf"))
        by_id += sum(1 for j, _ in want if j in ids_got)
        tied += sum(1 for j, s in want if j in ids_got or s <= kth + eps)
    return by_id / max(1, k * len(rows)), tied / max(1, k * len(rows))


def prepare(folder: Path, n_keys: int = 200_000, n_check: int = 2000) -> None:
    """The inputs, small enough to travel (the device tool carries 64 MiB): the bundled
    model saved in fp16 (what the GPU path runs) with its weights xz-compressed, ``n_keys``
    MASSIVE keys, ``n_check`` mixed-locale keys and their vectors from the original fp32
    model on this CPU (stored fp16)."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from bench.run import _massive_dir, massive_keys, mixed_keys
    from selflearn.config import Settings
    from selflearn.encoders.embed import _model_path

    folder.mkdir(parents=True, exist_ok=True)
    model = SentenceTransformer(_model_path(Settings().embedding_model), device="cpu", local_files_only=True).float()
    check = mixed_keys(n_check, _massive_dir())[:n_check]
    ref = model.encode(check, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    (folder / "check.txt").write_text("\n".join(check), encoding="utf-8")
    np.save(folder / "ref.npy", ref.astype(np.float16))
    with lzma.open(folder / "keys.txt.xz", "wt", encoding="utf-8", preset=9) as fh:
        fh.write("\n".join(massive_keys(n_keys, _massive_dir())))
    out = folder / "minilm-fp16"
    model.half().save(str(out))
    (out / "README.md").unlink(missing_ok=True)
    weights = out / "model.safetensors"
    with open(weights, "rb") as src, lzma.open(out / "model.safetensors.xz", "wb", preset=9) as dst:
        dst.write(src.read())
    weights.unlink()  # unpacked on the GPU machine before the check
    _say(f"inputs in {folder}: {sum(f.stat().st_size for f in folder.rglob('*') if f.is_file()) / 2**20:.1f} MiB")


def unpack(folder: Path) -> None:
    packed = folder / "minilm-fp16" / "model.safetensors.xz"
    if packed.is_file():
        with lzma.open(packed, "rb") as src, open(packed.with_suffix(""), "wb") as dst:
            dst.write(src.read())
        packed.unlink()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepare", metavar="DIR", help="build the inputs into DIR and stop")
    ap.add_argument("--inputs", metavar="DIR", help="the --prepare folder: sets --model, --keys, --check-texts, --ref")
    ap.add_argument("--model", help="sentence-transformers model folder")
    ap.add_argument("--keys", help="one key per line (.xz allowed): embedded and searched")
    ap.add_argument("--check-texts", help="texts whose fp32 CPU vectors are in --ref")
    ap.add_argument("--ref", help=".npy: fp32-model CPU vectors of --check-texts (any float dtype)")
    ap.add_argument("--out")
    ap.add_argument("--config", default="{}", help="Settings overrides as JSON")
    ap.add_argument("--cpu-keys", type=int, default=4000, help="keys for the CPU encode baseline")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if a.prepare:
        prepare(Path(a.prepare))
        return 0
    if a.inputs:
        d = Path(a.inputs)
        unpack(d)
        a.model, a.keys, a.check_texts, a.ref = str(d / "minilm-fp16"), str(d / "keys.txt.xz"), str(d / "check.txt"), str(d / "ref.npy")
    missing = [n for n in ("model", "keys", "check_texts", "ref", "out") if not getattr(a, n)]
    if missing:
        ap.error("give --inputs DIR (or --model, --keys, --check-texts, --ref) and --out; missing: " + ", ".join(missing))
    import numpy as np
    import torch

    from selflearn.encoders import embed

    from selflearn.core import paraphrase
    from selflearn.config import Settings
    from selflearn.encoders.devices import choose_devices, cuda_available, faiss_gpus

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def save() -> None:
        (out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str))

    def step(name: str, fn) -> None:
        _say(name)
        t = _now()
        try:
            res[name] = fn()
        except Exception as exc:  # one broken step must not hide the others' results
            import traceback

            res[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        res[name + "_wall_s"] = round(_now() - t, 2)
        _say(f"{name}: {json.dumps(res[name], default=str)[:600]}")
        save()

    import faiss

    res["env"] = {
        "torch": torch.__version__, "cuda": cuda_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(), "faiss": faiss.__version__, "faiss_gpus": faiss_gpus(),
    }
    import sentence_transformers
    import transformers

    res["env"].update(sentence_transformers=sentence_transformers.__version__, transformers=transformers.__version__)
    save()
    settings = Settings.from_dict({"embedding_backend": "sentence-transformers", "embedding_model": a.model,
                                   **json.loads(a.config)})  # a sentence-transformers folder; defaults otherwise (device auto)

    def plan():
        d = choose_devices(settings)
        return {**dataclasses.asdict(d), "cache_id": embed.encoder_cache_id(settings)}

    step("plan", plan)

    keys = _read_lines(Path(a.keys))
    check = _read_lines(Path(a.check_texts))
    ref = np.load(a.ref).astype(np.float32)
    check = check[: len(ref)]
    state: dict = {}

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def gpu_encoder():
        enc = embed.load_encoder(settings, worker=False)
        enc.encode(keys[:2048])  # warm-up: kernels, allocator
        v = enc.encode(check)
        cos = np.sum(v * ref, axis=1)
        state["gpu_check_vectors"] = v
        reps = []
        for _ in range(3):
            sync()
            t = _now()
            enc.encode(keys[:20000])
            sync()
            reps.append(_now() - t)
        t = _now()
        x = enc.encode(keys)
        all_s = _now() - t
        state["x"] = x
        return {"device": enc.device, "weights_dtype": enc.weights_dtype, "backend": enc.backend, "precision": enc.precision, "batch_size": enc.batch_size,
                "cosine_vs_ref_mean": round(float(cos.mean()), 5),
                "cosine_vs_ref_min": round(float(cos.min()), 5), "check_texts": len(check),
                "keys_per_s_20k_median_of_3": round(len(keys[:20000]) / statistics.median(reps), 1),
                "all_keys": len(keys), "all_keys_s": round(all_s, 2), "all_keys_per_s": round(len(keys) / all_s, 1)}

    step("gpu_encoder", gpu_encoder)

    def cpu_plain_encode():
        from sentence_transformers import SentenceTransformer

        m = SentenceTransformer(a.model, device="cpu", local_files_only=True).float().eval()
        texts = keys[: a.cpu_keys]
        with torch.inference_mode():
            m.encode(texts[:64], batch_size=64)
            t = _now()
            m.encode(texts, batch_size=int(settings.embedding_batch_size), normalize_embeddings=True)
            s = _now() - t
            v = m.encode(check, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        cpu_cos_ref = np.sum(v * ref, axis=1)
        out_ = {"keys": len(texts), "s": round(s, 2), "keys_per_s": round(len(texts) / s, 1),
                "threads": torch.get_num_threads(), "cosine_cpu_here_vs_ref_mean": round(float(cpu_cos_ref.mean()), 5)}
        g = state.get("gpu_check_vectors")
        if g is not None:
            c = np.sum(g * v, axis=1)
            out_.update(cosine_gpu_vs_cpu_here_mean=round(float(c.mean()), 5), cosine_gpu_vs_cpu_here_min=round(float(c.min()), 5))
        gk = res.get("gpu_encoder", {}).get("keys_per_s_20k_median_of_3")
        if gk:
            out_["gpu_over_cpu_throughput"] = round(gk / out_["keys_per_s"], 1)
        return out_

    step("cpu_plain_encode", cpu_plain_encode)

    def knn(n: int):
        x = state["x"][:n]
        n = len(x)
        k = int(settings.knn_k)
        sample = np.sort(np.random.default_rng(0).choice(n, size=min(n, 5000), replace=False))
        t = _now()
        exact_D, exact_I = faiss.knn(x[sample], x, k + 1, faiss.METRIC_INNER_PRODUCT)  # exact, sampled rows
        exact_s = _now() - t
        rows = {}
        first = choose_devices(settings).knn  # what the pipeline picks here: torch-cuda on a GPU
        first_cfg = {} if first != "faiss-cpu" else {"knn_backend": "torch"}  # (a machine without a GPU)
        for cfg in (first_cfg, {"knn_backend": "faiss"}):
            s = dataclasses.replace(settings, **cfg)
            engine = choose_devices(s).knn
            times, info = [], {}
            for _ in range(2):
                info = {}
                t = _now()
                pairs = paraphrase.knn_pairs(x, k, -1.0, s, info=info)
                times.append(_now() - t)
            # neighbour lists back from the pairs (each row's best k by cosine)
            nb: list[list[tuple[int, float]]] = [[] for _ in range(n)]
            for i, j, c in pairs.sort_values("cosine", ascending=False, kind="stable").itertuples(index=False):
                if len(nb[i]) < k:
                    nb[i].append((j, c))
                if len(nb[j]) < k:
                    nb[j].append((i, c))
            rec, rec_tied = _recall_at_k(sample, [nb[r] for r in sample], exact_I, exact_D, k)
            rows[engine] = {"s_min_of_2": round(min(times), 2), "pairs": len(pairs), "recall_at_10_by_id": round(rec, 4),
                            "recall_at_10_tie_aware": round(rec_tied, 4),
                            "index": {kk: info.get(kk) for kk in ("kind", "nlist", "nprobe", "recall", "gpu")}}
        rows["exact_faiss_cpu_s_for_sampled_rows"] = round(exact_s, 2)
        rows["sampled_rows"] = len(sample)
        engines = [e for e in rows if e != "faiss-cpu" and not e.startswith("exact")]
        rows["faiss_cpu_over_" + engines[0].replace("-", "_")] = round(rows["faiss-cpu"]["s_min_of_2"] / rows[engines[0]]["s_min_of_2"], 2)
        return rows

    step("knn_20k", lambda: knn(20000))
    step("knn_all", lambda: knn(len(state["x"])))
    _say("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
