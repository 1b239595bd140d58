"""The fast CPU encoder path: a sentence-transformers model exported once to ONNX,
quantized dynamically to int8 and run with onnxruntime, the model's own tokenizer and the
model's pooling (mean or CLS) and L2 normalization.

Why not ``sentence-transformers[onnx]``: it pulls optimum, which downgrades transformers
and sentence-transformers (STACK.md). Why the checks: a plain ``torch.onnx.export`` of a
BERT under transformers 5 with the default (SDPA) attention gave wrong vectors; eager
attention exports correctly, and int8 quantization costs some agreement. So every export
is compared with the torch path on real text before it is used, and an export that does
not agree is recorded as failed and never used (the caller falls back to torch).

Variants are tried in order until one agrees (``VARIANTS``), all with onnxruntime's BERT
fusions (Attention, SkipLayerNorm, BiasGelu) and per-channel int8 weights:
  * ``int8-fused``: every weight MatMul in int8 (fastest);
  * ``int8-fused-ffn-out-fp32``: the six FFN down-projections stay fp32;
  * ``fp32-fused``: no quantization (exact, smaller gain).
Measured on real MASSIVE keys (machine under heavy load: speeds are rough, sentences/s with
torch = 28.6 in the same run): en/de/ja 2,300 keys: int8-fused 82 (cosine mean 0.9906),
fp32 fused 34 (1.0000); per-tensor int8 gave mean 0.958 only. On 900 keys of the six default
simulator locales (en, de, ja, ar, hi, ru): int8-fused mean 0.9885 (fails the 0.99 check),
FFN-out in fp32 0.9936 (min 0.980).

Exports live in ``<models_dir>/<export_id>/`` where export_id hashes the model folder's
weights and the versions of torch, transformers, onnx and onnxruntime: a new model or
library starts a fresh export. ``meta.json`` holds the variant and its agreement.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

EXPORT_FORMAT = 2  # bump when the export recipe changes
# (name, onnxruntime BERT fusions, quantize, MatMul name fragments kept in fp32)
VARIANTS = (
    ("int8-fused", True, True, ()),
    # The FFN down-projections see GELU outputs with long tails: int8 there costs most.
    ("int8-fused-ffn-out-fp32", True, True, ("/output/dense/",)),
    ("fp32-fused", True, False, ()),
)
MIN_MEAN_COSINE = 0.99  # agreement with the torch path over the check texts
MIN_COSINE = 0.90  # no single text may drift further
MODELS_DIR_ENV = "SELFLEARN_MODELS_DIR"


def default_models_dir() -> Path:
    if os.environ.get(MODELS_DIR_ENV):
        return Path(os.environ[MODELS_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "selflearn" / "models"


def _versions() -> str:
    out = []
    for pkg in ("torch", "transformers", "onnx", "onnxruntime"):
        try:
            out.append(f"{pkg}={metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            out.append(f"{pkg}=none")
    return ",".join(out)


def export_id(model_path: str) -> str:
    """Stable id of (model weights, library versions, recipe)."""
    h = hashlib.sha1(f"{EXPORT_FORMAT}|{_versions()}".encode())
    p = Path(model_path)
    for f in sorted(p.rglob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".txt"):
            st = f.stat()
            h.update(f"{f.relative_to(p)}|{st.st_size}|{int(st.st_mtime)}".encode())
    slug = "".join(c if c.isalnum() else "-" for c in p.name).strip("-").lower()[:40] or "model"
    return f"{slug}-{h.hexdigest()[:12]}"


def read_meta(models_dir: str | Path, model_path: str) -> dict | None:
    f = Path(models_dir) / export_id(model_path) / "meta.json"
    if not f.is_file():
        return None
    return json.loads(f.read_text())


def _pooling_mode(st) -> str | None:
    """'mean' or 'cls' for a plain Transformer -> Pooling [-> Normalize] model, else None."""
    mods = list(st)
    if len(mods) < 2 or type(mods[1]).__name__ != "Pooling" or len(mods) > 3:
        return None
    if len(mods) == 3 and type(mods[2]).__name__ != "Normalize":
        return None
    pool = mods[1]
    mode = getattr(pool, "pooling_mode", None)
    if mode is None and hasattr(pool, "get_pooling_mode_str"):  # sentence-transformers < 6
        mode = pool.get_pooling_mode_str()
    return mode if mode in ("mean", "cls") else None


def _export_fp32(model_path: str, out: Path, pooling: str, tokenizer) -> None:
    import torch
    from transformers import AutoModel

    # Eager attention: the SDPA path exported wrong outputs (attention-mask handling).
    # .float(): transformers 5 keeps a checkpoint's dtype, and an fp16 one would export fp16
    model = AutoModel.from_pretrained(model_path, attn_implementation="eager", local_files_only=True).float().eval()

    class Pooled(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
            if pooling == "cls":
                return h[:, 0]
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    # Any two texts of different lengths: the example only fixes the graph's input types.
    enc = tokenizer(["a", "a b c d e f"], padding=True, return_tensors="pt")
    if "token_type_ids" not in enc:
        enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])
    dyn = {n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask", "token_type_ids")}
    dyn["embedding"] = {0: "batch"}
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Pooled(model), (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]), str(out),
            input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["embedding"],
            dynamic_axes=dyn, opset_version=17, dynamo=False,
        )


def _quantize(src: Path, dst: Path, fused: bool, config, quantize: bool = True, keep_fp32: tuple = ()) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if fused:
        from onnxruntime.transformers.optimizer import optimize_model

        opt = optimize_model(str(src), model_type="bert", num_heads=int(config.num_attention_heads),
                             hidden_size=int(config.hidden_size), opt_level=1)
        if not quantize:
            opt.save_model_to_file(str(dst))
            return
        fused_path = dst.with_suffix(".fused.onnx")
        opt.save_model_to_file(str(fused_path))
        src = fused_path
    exclude = [n.name for n in onnx.load(str(src)).graph.node
               if n.op_type == "MatMul" and "attention" not in n.name and any(k in n.name for k in keep_fp32)]
    # Per-channel weights: per-tensor int8 lost too much (cosine 0.958 against torch).
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=exclude,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def make_session(path: str | Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # Batches come in every (batch, length) shape: the arena and the per-shape memory
    # patterns would keep the peak of each, growing a worker by ~0.3 GiB per 1,000 keys.
    so.enable_cpu_mem_arena = False
    so.enable_mem_pattern = False
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def onnx_encode_fn(session, tokenizer, max_length: int, batch_size: int) -> Callable[[list[str]], np.ndarray]:
    """texts -> float32 (n, d) L2-normalized. Texts are sorted by length before batching
    (less padding), as sentence-transformers does."""
    names = {i.name for i in session.get_inputs()}

    def fn(texts: list[str]) -> np.ndarray:
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = None
        for s in range(0, len(texts), batch_size):
            idx = order[s : s + batch_size]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="np")
            feed = {k: np.asarray(enc[k], dtype=np.int64) for k in names if k in enc}
            if "token_type_ids" in names and "token_type_ids" not in feed:
                feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
            v = session.run(None, feed)[0]
            if out is None:
                out = np.zeros((len(texts), v.shape[1]), dtype=np.float32)
            out[idx] = v
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        return (out / norms).astype(np.float32, copy=False)

    return fn


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean, min) cosine of row pairs of two L2-normalized matrices."""
    cos = np.sum(a * b, axis=1)
    return float(cos.mean()), float(cos.min())


def ensure_export(model_path: str, check_texts: list[str], models_dir: str | Path | None = None) -> dict:
    """The int8 export of ``model_path`` (built and checked on first use): its meta dict with
    ``ok`` (bool), ``variant``, ``path`` (the .onnx file, when ok), ``mean_cosine``,
    ``min_cosine``, ``check_texts``, ``reason`` (when not ok).

    ``check_texts``: real text to compare the export with the torch path on (the keys of the
    run being embedded); needed only when no export exists yet. The export is written to a
    temp folder and renamed into place, so concurrent processes never see half a model.
    """
    models_dir = Path(models_dir) if models_dir else default_models_dir()
    eid = export_id(model_path)
    final = models_dir / eid
    meta_file = final / "meta.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("ok"):
            meta["path"] = str(final / meta["file"])
        return meta
    texts = [t for t in dict.fromkeys(str(t) for t in check_texts) if t][:1000]
    if len(texts) < 20:
        return {"ok": False, "reason": f"only {len(texts)} texts to check an export against", "transient": True}
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model_path, device="cpu", local_files_only=True).float()  # the fp32 reference
    pooling = _pooling_mode(st)
    meta: dict = {"format": EXPORT_FORMAT, "versions": _versions(), "model": str(model_path), "check_texts": len(texts)}
    if pooling is None:
        meta.update(ok=False, reason="model is not Transformer -> Pooling(mean|cls) [-> Normalize]")
        _write_export(final, None, meta)
        return meta
    with torch.inference_mode():
        ref = np.asarray(st.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True), dtype=np.float32)
    tok = st.tokenizer
    max_len = int(st.max_seq_length or 512)
    tmp = models_dir / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True, exist_ok=True)
    tried = []
    try:
        fp32 = tmp / "model.onnx"
        _export_fp32(model_path, fp32, pooling, tok)
        config = st[0].auto_model.config
        for variant, fused, quantize, keep_fp32 in VARIANTS:
            dst = tmp / f"model-{variant}.onnx"
            try:
                _quantize(fp32, dst, fused, config, quantize, keep_fp32)
                fn = onnx_encode_fn(make_session(dst, 2), tok, max_len, 128)
                mean, low = agreement(fn(texts), ref)
            except Exception as exc:  # a fusion the installed onnxruntime cannot do: next variant
                tried.append({"variant": variant, "error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            tried.append({"variant": variant, "mean_cosine": round(mean, 5), "min_cosine": round(low, 5)})
            if mean >= MIN_MEAN_COSINE and low >= MIN_COSINE:
                meta.update(ok=True, variant=variant, file=dst.name, mean_cosine=mean, min_cosine=low,
                            pooling=pooling, max_length=max_len, tried=tried)
                break
        else:
            meta.update(ok=False, reason=f"no ONNX export agrees with torch (mean >= {MIN_MEAN_COSINE}, min >= {MIN_COSINE})",
                        tried=tried)
        for f in tmp.glob("*.onnx"):  # keep only the chosen file
            if not meta.get("ok") or f.name != meta["file"]:
                f.unlink()
        _write_export(final, tmp, meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else meta
    if meta.get("ok"):
        meta["path"] = str(final / meta["file"])
    return meta


def _write_export(final: Path, tmp: Path | None, meta: dict) -> None:
    if tmp is None:
        tmp = final.parent / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "path"}, indent=1))
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished the same export first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
