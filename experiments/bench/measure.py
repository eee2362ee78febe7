"""Shared helpers of the semantic-view measurement scripts (not part of the library).

MobileNetV2 pre-logits features through the TFLite interpreter (ai-edge-litert, a test extra), cached to
.npy; a linear-CCA + kNN label-transfer evaluation with both metric families. The pipeline proper uses
dcca_jax's own Flax MobileNetV2 and recommendation modules; these helpers only exist so the semantic
representations can be compared on real features before those land.
"""
from __future__ import annotations

import hashlib
import os
import pathlib

import numpy as np
from PIL import Image

from dcca_jax.models import cca

MODEL = "models/mobilenet_v2_1.0_224_quant/mobilenet_v2_1.0_224_quant.tflite"


def tflite_features(paths, *, shared: pathlib.Path, cache: pathlib.Path) -> np.ndarray:
    """(n, 1280) dequantised MobileNetV2 AvgPool features (shorter side to 224, centre crop), cached."""
    # Keyed on path, size and mtime of every image: a regenerated dataset at the same paths is not reused.
    stats = [f"{p}:{os.stat(p).st_size}:{os.stat(p).st_mtime_ns}" for p in paths]
    key = hashlib.sha256("\n".join(stats).encode()).hexdigest()[:16]
    out = cache / f"mnv2_{key}.npy"
    if out.is_file():
        return np.load(out)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(shared / MODEL), experimental_preserve_all_tensors=True, num_threads=2)
    it.allocate_tensors()
    inp = it.get_input_details()[0]["index"]
    feat = next(t for t in it.get_tensor_details() if t["name"] == "MobilenetV2/Logits/AvgPool")
    scale, zero = feat["quantization"]
    rows = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        s = 224 / min(im.size)
        im = im.resize((max(224, round(im.size[0] * s)), max(224, round(im.size[1] * s))), Image.BILINEAR)
        left, top = (im.size[0] - 224) // 2, (im.size[1] - 224) // 2
        im = im.crop((left, top, left + 224, top + 224))
        it.set_tensor(inp, np.asarray(im, np.uint8)[None])
        it.invoke()
        rows.append((it.get_tensor(feat["index"]).reshape(-1).astype(np.float32) - zero) * scale)
    x = np.stack(rows)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(out, x)
    return x


def pca(train: np.ndarray, *others: np.ndarray, dim: int):
    mean = train.mean(0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    w = vt[:dim].T
    return [(x - mean) @ w for x in (train, *others)]


def transfer_metrics(z_train, z_test, y_train, y_test, *, k: int = 5, n_tags: int = 5) -> dict:
    """Cosine kNN in the common space, similarity-weighted votes of the neighbours' labels, top-n tags.

    Per word (annotation literature): P and R averaged over words (P = 0 for a never-predicted word),
    F1 of the averages, N+ = words with recall > 0. Per image (paper Eq. 9-11): AP, AR, AF.
    """
    a = z_train / np.linalg.norm(z_train, axis=1, keepdims=True)
    b = z_test / np.linalg.norm(z_test, axis=1, keepdims=True)
    sim = b @ a.T
    nn = np.argsort(-sim, axis=1)[:, :k]
    w = np.take_along_axis(sim, nn, axis=1)
    scores = np.einsum("nk,nkv->nv", w, y_train[nn].astype(float))
    top = np.argsort(-scores, axis=1, kind="stable")[:, :n_tags]
    pred = np.zeros_like(y_test, dtype=bool)
    np.put_along_axis(pred, top, True, axis=1)
    truth = y_test.astype(bool)
    hit = (pred & truth).sum(0)
    n_pred, n_true = pred.sum(0), truth.sum(0)
    words = n_true > 0
    p = np.where(n_pred > 0, hit / np.maximum(n_pred, 1), 0.0)[words].mean()
    r = (hit[words] / n_true[words]).mean()
    img_hit = (pred & truth).sum(1)
    has = truth.sum(1) > 0
    ap = (img_hit[has] / n_tags).mean()
    ar = (img_hit[has] / truth.sum(1)[has]).mean()
    return {
        "P": float(p), "R": float(r), "F1": float(2 * p * r / (p + r)), "N+": int((hit[words] > 0).sum()),
        "AP": float(ap), "AR": float(ar), "AF": float(2 * ap * ar / (ap + ar)),
    }


def cca_eval(xv_tr, xs_tr, xv_te, xs_te, y_tr, y_te, *, n_components, ridge_rel, k=5) -> dict:
    """Linear CCA with ridges relative to each view's mean variance, then kNN transfer and correlation sums."""
    rv = ridge_rel * float(xv_tr.var(0).mean())
    rs = ridge_rel * float(xs_tr.var(0).mean())
    n_components = min(n_components, xv_tr.shape[1], xs_tr.shape[1])
    params = cca.fit_linear_cca(xv_tr, xs_tr, n_components=n_components, ridge_v=rv, ridge_s=rs)
    zv_tr, zs_tr = (np.asarray(z) for z in cca.project(params, xv_tr, xs_tr))
    zv_te, zs_te = (np.asarray(z) for z in cca.project(params, xv_te, xs_te))
    curve = np.asarray(cca.correlation_score_curve(zv_te, zs_te))
    m = transfer_metrics(zv_tr, zv_te, y_tr, y_te, k=k)
    m["ccs_test"] = {str(t): float(curve[min(t, len(curve)) - 1]) for t in (1, 5, 10, 20)}
    m["n_components"] = n_components
    return m
