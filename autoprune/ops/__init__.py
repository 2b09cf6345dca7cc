"""Pure math on arrays: 1-D k-means, Huffman coding, relative-index (sparse) encoding, and the
accuracy-budget rule (feasible, best within, Pareto fronts, hypervolume).

Nothing here knows about ``nn.Module`` or Optuna, so all of it is tested exhaustively on its own.
"""

from autoprune.ops.huffman import HuffmanCode, pack_fixed, unpack_fixed
from autoprune.ops.kmeans import KMeansResult, init_centroids, kmeans_1d
from autoprune.ops.paired import PairedDrop, paired_drop
from autoprune.ops.pareto import best_within, feasible, fronts, hypervolume, non_dominated
from autoprune.ops.sparse import decode_relative, encode_relative

__all__ = [
    "HuffmanCode",
    "KMeansResult",
    "PairedDrop",
    "best_within",
    "decode_relative",
    "encode_relative",
    "feasible",
    "fronts",
    "hypervolume",
    "init_centroids",
    "kmeans_1d",
    "non_dominated",
    "paired_drop",
    "pack_fixed",
    "unpack_fixed",
]
