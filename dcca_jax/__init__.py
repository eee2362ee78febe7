"""dcca_jax: CCA, kernel CCA and deep CCA for cross-modal image tag recommendation, in JAX.

The correlation core and the three models are re-exported here; the views, datasets, recommendation,
metrics, baselines, scale-out and pipeline live in their modules (``dcca_jax.<module>``), see README.md.
"""

from dcca_jax.models.base import CorrelationModel, correlation_score_curve, load_model, paired_correlations
from dcca_jax.models.cca import CCAParams, LinearCCA, fit_linear_cca, project
from dcca_jax.models.dcca import DeepCCA, NonFiniteLossError
from dcca_jax.models.kcca import KernelCCA
from dcca_jax.linalg import cholesky_whitener, covariance, inv_sqrtm, sqrtm_psd
from dcca_jax.objectives import (
    OBJECTIVES,
    analytic_trace_norm_gradient,
    canonical_correlations,
    cca_loss,
    correlation_matrix,
    correlation_objective,
)
from dcca_jax.models.streaming import StreamingLinearCCA, fit_streaming_cca
from dcca_jax.tagging.tagger import Tagger

__version__ = "0.1.0"
