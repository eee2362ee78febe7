"""The feature-lever study's candidate sets, assembled from pooled blocks as the backbone options would be."""
import numpy as np

from dcca_jax.visual import mobilenet
from experiments.configs import feature_levers as cfg_lib
from experiments.studies import feature_levers


def test_candidates_match_the_backbone_options():
    c = cfg_lib.get_config()
    rng = np.random.default_rng(0)
    passes = {p: {b: rng.normal(size=(7, mobilenet.POOLABLE[b])) for b in c.blocks} for p in feature_levers.PASSES}
    cands = feature_levers.candidates(c, passes)
    assert set(cands) == {"baseline", "multi_scale", "flip", "finetuned"}
    for lever, cand in cands.items():  # the baseline first in every lever: the plain pass's 1280-d feature
        np.testing.assert_array_equal(cand[0][1], passes["plain"]["Conv_1"])
    assert len(cands["multi_scale"]) == 2 * len(c.block_sets)  # each set x {none, l2}, baseline counted once
    for settings, x in cands["multi_scale"][1:]:
        parts = [passes["plain"][b] for b in settings["pool_blocks"]]
        if settings["block_norm"] == "l2":
            parts = [p / np.linalg.norm(p, axis=1, keepdims=True) for p in parts]
        np.testing.assert_allclose(x, np.concatenate(parts, axis=1), rtol=1e-12)
    settings, x = cands["flip"][1]
    assert settings["tta"] == "flip"
    np.testing.assert_allclose(x, (passes["plain"]["Conv_1"] + passes["mirror"]["Conv_1"]) / 2)
    np.testing.assert_array_equal(cands["finetuned"][1][1], passes["finetuned"]["Conv_1"])
    # scaling to unit mean per-dimension variance, computed on the fitting rows only
    a, b = feature_levers._scaled(3 * passes["plain"]["Conv_1"], passes["plain"]["Conv_1"])
    assert abs(np.mean(np.var(a, axis=0)) - 1) < 1e-12
    np.testing.assert_allclose(b * 3, a)
