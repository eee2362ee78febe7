"""Input checking shared by every model (models/base.py, linalg.as_float_array): half-precision input."""
import jax
import numpy as np
import pytest

from dcca_jax.data.synthetic import correlated_views
from dcca_jax.linalg import as_float_array, check_views
from dcca_jax.models.cca import LinearCCA
from dcca_jax.models.dcca import DeepCCA
from dcca_jax.models.kcca import KernelCCA
from dcca_jax.models.streaming import StreamingLinearCCA

MODELS = {
    "linear": lambda: LinearCCA(n_components=3),
    "kernel": lambda: KernelCCA(n_components=3),
    "streaming": lambda: StreamingLinearCCA(n_components=3, chunk_size=64),
    # The library defaults, shrunk: residual ReLU towers started at CCA, dropout, early stopping.
    "deep": lambda: DeepCCA(towers=dict(visual_hidden=(8,), semantic_hidden=(8,), out_dim=3), epochs=2,
                            batch_size=64, log_every=10**9),
}


def test_as_float_array_computes_half_precision_in_float32():
    for dt in (np.float16, jax.numpy.bfloat16):
        assert as_float_array(np.ones((2, 2), dt)).dtype == np.float32
    a, b = check_views(np.ones((3, 2), np.float16), np.ones((3, 1), np.float32))
    assert a.dtype == b.dtype == np.float32
    assert as_float_array(np.ones((2, 2), np.float32)).dtype == np.float32


@pytest.mark.parametrize("name", sorted(MODELS))
def test_float16_input_gives_the_float32_result(name):
    x_v, x_s = correlated_views(300, 6, 5, latent=3, noise=0.5, seed=1, dtype=np.float32)
    t_v, t_s = correlated_views(100, 6, 5, latent=3, noise=0.5, seed=2, dtype=np.float32)
    h_v, h_s, ht_v, ht_s = (a.astype(np.float16) for a in (x_v, x_s, t_v, t_s))
    half = MODELS[name]().fit(h_v, h_s)  # used to crash inside jaxlib (no float16 Cholesky/eigh)
    z_v, z_s = half.transform(ht_v, ht_s)
    # Exactly the float32 computation on the float16-rounded values...
    ref = MODELS[name]().fit(h_v.astype(np.float32), h_s.astype(np.float32))
    r_v, r_s = ref.transform(ht_v.astype(np.float32), ht_s.astype(np.float32))
    assert z_v.dtype == z_s.dtype == r_v.dtype != np.float16  # float32 (streaming: float64 host statistics)
    np.testing.assert_allclose(np.asarray(z_v), np.asarray(r_v), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(z_s), np.asarray(r_s), rtol=1e-5, atol=1e-5)
    # ...and, to float16 rounding, the float32 result on the unrounded data.
    full = MODELS[name]().fit(x_v, x_s)
    np.testing.assert_allclose(np.asarray(half.score(ht_v, ht_s)), np.asarray(full.score(t_v, t_s)), atol=2e-2)
