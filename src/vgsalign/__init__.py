"""Audio-visual alignment in visually grounded speech models.

A reproducible pipeline for Khorrami & Rasanen (Interspeech 2021), "Evaluation of
audio-visual alignments in visually grounded speech models": data preparation,
features, the CNN0 and CNNATT models, the alignment tensor T and its alignment
(AS) and glancing (GS) scores.
"""

__version__ = "0.1.0"
