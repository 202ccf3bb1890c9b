"""Sample quality in a feature space: Fréchet distance and KID, and the networks that give the features.

- `diffusion.metrics.distances`: `frechet_distance` (symmetric matrix square roots in float64),
  `kernel_inception_distance`, and `compare_features`, whose `QualityResult` labels every number with
  its sample count (``FD@N``: FD is biased and only comparable at equal N).
- `diffusion.metrics.features`: the `FeatureExtractor` protocol and `load_feature_extractor(name)`
  for ``classifier`` (ours, trained on the data), ``inception`` (torchvision's, not TF-FID's) and
  ``efficientnet-lite0``; weights are local only, never downloaded.
- `diffusion.metrics.classifier`: the small CNN `Classifier` behind the ``classifier`` extractor.

`diffusion.metrics.evaluation.evaluate` puts these together with a model and a folder of real images.
"""

from .distances import (
    KID_NUM_SUBSETS,
    KID_SUBSET_SIZE,
    QualityResult,
    compare_features,
    default_kid_subset_size,
    frechet_distance,
    frechet_distance_between,
    gaussian_stats,
    kernel_inception_distance,
)
from .features import (
    EXTRACTORS,
    FeatureExtractor,
    MissingDependencyError,
    NetworkExtractor,
    extract_features,
    inception_cache_path,
    load_feature_extractor,
)

__all__ = [
    "EXTRACTORS",
    "KID_NUM_SUBSETS",
    "KID_SUBSET_SIZE",
    "FeatureExtractor",
    "MissingDependencyError",
    "NetworkExtractor",
    "QualityResult",
    "compare_features",
    "default_kid_subset_size",
    "extract_features",
    "frechet_distance",
    "frechet_distance_between",
    "gaussian_stats",
    "inception_cache_path",
    "kernel_inception_distance",
    "load_feature_extractor",
]
