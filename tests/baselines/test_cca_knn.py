"""CCA-KNN baseline: mean tag vectors by hand, skip-gram neighbourhoods, the fit leaves untagged images out."""
import numpy as np

from dcca_jax.baselines import cca_knn, general_cca
from tests.conftest import outputs_of_fresh_processes


def test_mean_tag_vectors_hand_case():
    e = np.array([[1.0, 0], [0, 2], [4, 4]])
    y = np.array([[1, 1, 0], [0, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(cca_knn.mean_tag_vectors(y, e), [[0.5, 1], [0, 0], [4, 4]])


def test_word2vec_groups_cooccurring_tags():
    # two topics of three tags each: tags of a topic share their contexts
    words = ["sky", "cloud", "sun", "tiger", "grass", "cat", "unused"]
    y = np.zeros((200, 7))
    y[:100, [0, 1, 2]] = 1
    y[100:, [3, 4, 5]] = 1
    e = cca_knn.train_tag_word2vec(y, words, dim=16, epochs=20, seed=1)
    assert e.shape == (7, 16) and not e[6].any()
    n = e[:6] / np.linalg.norm(e[:6], axis=1, keepdims=True)
    c = n @ n.T
    same = np.kron(np.eye(2), np.ones((3, 3))).astype(bool) & ~np.eye(6, dtype=bool)
    cross = ~np.kron(np.eye(2), np.ones((3, 3))).astype(bool)
    assert c[same].mean() > c[cross].mean() + 0.15


def test_fit_leaves_untagged_images_out():
    rng = np.random.default_rng(0)
    xv = rng.normal(size=(120, 6))
    y = (rng.random((120, 4)) < 0.4).astype(float)
    y[:10] = 0
    e = rng.normal(size=(4, 3))
    m = cca_knn.fit_cca_knn(xv, y, e, pca_dims=0, n_components=3, ridge_v=1e-3, ridge_s=1e-3)
    keep = y.sum(1) > 0
    ref = general_cca.fit_general_cca(xv[keep], cca_knn.mean_tag_vectors(y[keep], e), pca_dims=0,
                                      n_components=3, ridge_v=1e-3, ridge_s=1e-3)
    np.testing.assert_allclose(m.correlations, ref.correlations, rtol=1e-10)
    assert cca_knn.cca_knn_config().transfer.corr_power == 4.0


_CHILD = """
import sys
import numpy as np
from dcca_jax.baselines import cca_knn
rng = np.random.default_rng(0)
y = (rng.random((60, 8)) < 0.4).astype(np.int8)
np.save(sys.argv[1], cca_knn.train_tag_word2vec(y, [f"w{i}" for i in range(8)], dim=8, epochs=3, seed=2))
"""


def test_tag_word2vec_is_identical_in_two_processes(tmp_path):
    # Different hash salts: only a process-independent hash function (skipgram.stable_hash) gives equal vectors.
    outs = [np.load(p) for p in outputs_of_fresh_processes(_CHILD, tmp_path, suffix=".npy")]
    assert outs[0].shape == (8, 8) and np.all(np.linalg.norm(outs[0], axis=1) > 0)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_tag_word2vec_is_gensim_skipgram_with_the_stable_hash():
    # The oracle: gensim's Word2Vec called directly with CCA-KNN's settings (the vectors CCA-KNN always had).
    from gensim.models import Word2Vec

    from dcca_jax.semantic import skipgram

    rng = np.random.default_rng(1)
    y = (rng.random((50, 6)) < 0.5).astype(np.int8)
    words = [f"t{i}" for i in range(6)]
    got = cca_knn.train_tag_word2vec(y, words, dim=8, epochs=4, seed=3)
    sentences = [[words[w] for w in np.flatnonzero(row)] for row in y if row.any()]
    ref = Word2Vec(sentences, vector_size=8, window=5, sg=1, min_count=1, negative=5, sample=0, epochs=4, seed=3,
                   workers=1, hashfxn=skipgram.stable_hash)
    np.testing.assert_array_equal(got, np.stack([ref.wv[w] for w in words]))
