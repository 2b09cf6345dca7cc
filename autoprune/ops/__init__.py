"""Pure math on arrays: 1-D k-means, Huffman coding, relative-index (sparse) encoding.

Nothing here knows about ``nn.Module`` or Optuna, so all of it is tested exhaustively on its own.
"""

from autoprune.ops.huffman import HuffmanCode, pack_fixed, unpack_fixed
from autoprune.ops.kmeans import KMeansResult, init_centroids, kmeans_1d
from autoprune.ops.sparse import decode_relative, encode_relative

__all__ = [
    "HuffmanCode",
    "KMeansResult",
    "decode_relative",
    "encode_relative",
    "init_centroids",
    "kmeans_1d",
    "pack_fixed",
    "unpack_fixed",
]
