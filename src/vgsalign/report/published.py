"""Numbers published by Khorrami and Räsänen (Interspeech 2021, arXiv 2108.02562).

The tables of the report print these beside the values of a run. They are
comparison values only: no stage computes anything from them. Table 2 of the
paper was produced with the authors' released scoring code, so its values
follow the ``released_code`` scoring convention.
"""

from __future__ import annotations

METRICS = ("as_object", "as_word", "gs_object", "gs_word")

# Pool size of the authors' recall protocol: recall@10 is the mean over 100 pools of 1,000 test pairs.
PAPER_POOL_SIZE = 1000

# Table 1 of the paper: parameter count, frames of T for 5.12 s of speech, and
# recall@10 with the pooled protocol above.
TABLE1 = {
    "cnn0_sisa": {"parameters": 11_072_128, "t_frames": 64, "r10_s2i": 0.489, "r10_i2s": 0.487},
    "cnn0_misa": {"parameters": 11_072_128, "t_frames": 64, "r10_s2i": 0.436, "r10_i2s": 0.305},
    "cnn0_sima": {"parameters": 11_072_128, "t_frames": 64, "r10_s2i": 0.401, "r10_i2s": 0.446},
    "cnnatt_v0": {"parameters": 10_587_540, "t_frames": 64, "r10_s2i": 0.562, "r10_i2s": 0.559},
    "cnnatt_v1": {"parameters": 13_943_508, "t_frames": 128, "r10_s2i": 0.547, "r10_i2s": 0.531},
    "cnnatt_v2": {"parameters": 6_401_748, "t_frames": 64, "r10_s2i": 0.536, "r10_i2s": 0.544},
}

# Parameter counts of the architecture as described in the paper, computed from
# the layer sizes (biases and batch-norm running statistics included). They
# differ from TABLE1 by about 0.1 % for CNN0, v0 and v2. v1's published count is
# about 3.3 M higher than the count of v1 as described (v0 without its first pooling layer).
ARCHITECTURE_PARAMETERS = {
    "cnn0_sisa": 11_082_368,
    "cnn0_misa": 11_082_368,
    "cnn0_sima": 11_082_368,
    "cnn0_mima": 11_082_368,
    "cnnatt_v0": 10_599_828,
    "cnnatt_v1": 10_612_180,
    "cnnatt_v2": 6_415_060,
}

# Table 2 of the paper, keyed by (row, kind). The row is a variant name or
# "baseline", whose T is drawn uniformly from [0, 1]. Kind "softmax" scores
# CNNATT's T after the attention softmax: over space for the object metrics and
# over time for the word metrics.
TABLE2 = {
    ("baseline", "baseline"): {"as_object": 0.158, "as_word": 0.011, "gs_object": 0.158, "gs_word": 0.073},
    ("cnn0_sisa", "raw"): {"as_object": 0.200, "as_word": 0.016, "gs_object": 0.200, "gs_word": 0.102},
    ("cnn0_misa", "raw"): {"as_object": 0.270, "as_word": 0.020, "gs_object": 0.267, "gs_word": 0.132},
    ("cnn0_sima", "raw"): {"as_object": 0.223, "as_word": 0.041, "gs_object": 0.222, "gs_word": 0.214},
    ("cnnatt_v0", "raw"): {"as_object": 0.285, "as_word": 0.028, "gs_object": 0.282, "gs_word": 0.168},
    ("cnnatt_v1", "raw"): {"as_object": 0.292, "as_word": 0.038, "gs_object": 0.295, "gs_word": 0.227},
    ("cnnatt_v2", "raw"): {"as_object": 0.279, "as_word": 0.030, "gs_object": 0.277, "gs_word": 0.180},
    ("cnnatt_v0", "softmax"): {"as_object": 0.504, "as_word": 0.052, "gs_object": 0.504, "gs_word": 0.317},
    ("cnnatt_v1", "softmax"): {"as_object": 0.518, "as_word": 0.076, "gs_object": 0.518, "gs_word": 0.446},
    ("cnnatt_v2", "softmax"): {"as_object": 0.501, "as_word": 0.056, "gs_object": 0.501, "gs_word": 0.327},
}

# The scoring convention that the published Table 2 follows.
TABLE2_CONVENTION = "released_code"


def model_label(variant: str, kind: str = "raw") -> str:
    """Return the paper's name for a Table 2 row, such as ``CNNATT v1 softmax``."""
    if variant == "baseline":
        return "random baseline"
    family, _, name = variant.partition("_")
    if family == "cnn0":
        label = f"CNN0 {name.upper()}"
    elif family == "cnnatt":
        label = f"CNNATT {name}"
    else:
        label = variant
    return f"{label} softmax" if kind == "softmax" else label


def is_attention_variant(variant: str) -> bool:
    """Return whether a variant has CNNATT's attention softmax (and so a ``softmax`` row)."""
    return variant.startswith("cnnatt")
