"""Feature extraction (log-mel spectrograms, VGG16 maps) and the shard files that store them.

Importing this package loads only the shard reader, so training code does not
pay for importing librosa or torchvision. The extraction stages live in
``vgsalign.features.audio`` and ``vgsalign.features.image``.
"""

from vgsalign.features.shards import FeatureStore, ShardError, ShardWriter, shard_block, verify_shard, write_shard

__all__ = ["FeatureStore", "ShardError", "ShardWriter", "shard_block", "verify_shard", "write_shard"]
