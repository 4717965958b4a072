"""Training of the model variants: data batches, triplet loss, retrieval recall, the train stage.

- :mod:`~vgsalign.training.data`: caption-image pairs from memory-mapped feature shards.
- :mod:`~vgsalign.training.loss`: triplet loss with in-batch impostors.
- :mod:`~vgsalign.training.retrieval`: full-set and pooled recall in both directions.
- :mod:`~vgsalign.training.train`: the ``train_model`` stage with checkpoints and resume.
"""
