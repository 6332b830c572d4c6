"""Decode private images from MixUp / InstaHide encodings observed over T epochs.

The second stage of the paper's attack on encoding defenses (Section 5, after gradient inversion
has reconstructed the encodings): Carlini et al.'s decode.

- :func:`decode_with_keys` (:mod:`.known_keys`): partners and coefficients granted (the paper's
  upper bound); sparse least squares, exact on exact encodings, identifiability by rank.
- :func:`decode_without_keys` (:mod:`.no_keys`): nothing granted; cone-facet clustering (or a
  similarity-graph baseline), coefficient estimation and regression.
- :func:`collect_encodings` (:mod:`.collect`): encodings and keys across steps/epochs from the
  ground-truth sidecar, optionally with attack-reconstructed encodings in place of the exact ones.
- :mod:`.scoring`: evaluator-side cluster purity / Jaccard / similarity AUC against the true keys.

Pure PyTorch / NumPy / SciPy (no flwr / ray).
"""

from adversary.decode.collect import EncodingSet, collect_encodings
from adversary.decode.known_keys import DecodeResult, decode_with_keys, mixing_matrix, solve_mixing
from adversary.decode.no_keys import NoKeysResult, decode_without_keys, estimate_private_images, similarity_graph
from adversary.decode.scoring import cluster_jaccard, cluster_purity, membership, similarity_auc

__all__ = [
    "DecodeResult",
    "EncodingSet",
    "NoKeysResult",
    "cluster_jaccard",
    "cluster_purity",
    "collect_encodings",
    "decode_with_keys",
    "decode_without_keys",
    "estimate_private_images",
    "membership",
    "mixing_matrix",
    "similarity_auc",
    "similarity_graph",
    "solve_mixing",
]
