"""Every file path of a run, derived from the parameters in one place.

The Snakemake rules, the generated ``dvc.yaml`` and the stage entry points all
take their paths from :class:`RunPaths`, so no path is written twice. Paths are
relative to the project root (the folder holding ``params.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

RESULTS_DIR = "results"
SHARD_PATTERN = "{shard}"
VARIANT_PATTERN = "{variant}"


def names_vectors_file(spec: str) -> bool:
    """True when ``pairs.vectors`` names a file rather than a gensim.downloader model.

    gensim.downloader names (``word2vec-google-news-300``) have no dot and no
    path separator, so any value with one of them is a file path.
    """
    return "/" in spec or "\\" in spec or "." in spec


def shard_name(index: int) -> str:
    """Return the zero-padded name of feature shard ``index`` (``0003``)."""
    return f"{index:04d}"


@dataclass(frozen=True)
class RunPaths:
    """Paths of one run. Methods taking ``shard`` or ``variant`` accept the
    Snakemake wildcard patterns ``{shard}`` / ``{variant}`` as well as values."""

    params: Mapping[str, Any]

    # -- inputs ---------------------------------------------------------------

    @property
    def root(self) -> Path:
        return Path(RESULTS_DIR) / self.params["run"]

    @property
    def is_demo(self) -> bool:
        return self.params["data"]["source"] == "demo"

    @property
    def synthesizes_speech(self) -> bool:
        return self.is_demo or self.params["data"]["speech"]["source"] == "synthesize"

    @property
    def corpus_dir(self) -> Path:
        """Generated demo corpus in COCO layout (demo runs only)."""
        return self.root / "corpus"

    @property
    def coco_root(self) -> Path:
        return self.corpus_dir if self.is_demo else Path(self.params["data"]["coco_root"])

    @property
    def coco_splits(self) -> tuple[str, str]:
        """COCO split names used for (training + validation, test)."""
        data = self.params["data"]
        return data["train_split"], data["test_split"]

    def instances_file(self, split: str) -> Path:
        return self.coco_root / "annotations" / f"instances_{split}.json"

    def captions_file(self, split: str) -> Path:
        return self.coco_root / "annotations" / f"captions_{split}.json"

    def image_dir(self, split: str) -> Path:
        return self.coco_root / split

    @property
    def speech_root(self) -> Path:
        if self.synthesizes_speech:
            return self.root / "speech"
        return Path(self.params["data"]["speech"]["root"])

    def speech_dir(self, split: str) -> Path:
        """SPEECH-COCO layout of one split: ``json/`` and ``wav/`` inside."""
        return self.speech_root / split

    # -- stage outputs ----------------------------------------------------------

    @property
    def manifest(self) -> Path:
        """One row per caption used: ids, split, text, WAV path, word time stamps."""
        return self.root / "manifest" / "captions.parquet"

    @property
    def images(self) -> Path:
        """One row per image used: id, file, size, COCO split, our split."""
        return self.root / "manifest" / "images.parquet"

    @property
    def nouns(self) -> Path:
        return self.root / "nouns" / "nouns.parquet"

    @property
    def pairs(self) -> Path:
        return self.root / "pairs" / "pairs.parquet"

    @property
    def similarities(self) -> Path:
        """Similarity of every noun to every category label of its image."""
        return self.root / "pairs" / "similarities.parquet"

    @property
    def masks(self) -> Path:
        """224 x 224 masks of every category present in each test image."""
        return self.root / "pairs" / "masks.parquet"

    @property
    def pairs_summary(self) -> Path:
        return self.root / "pairs" / "summary.json"

    @property
    def word_vectors(self) -> Path:
        """Word2Vec trained on the corpus captions when no vectors are configured."""
        return self.root / "pairs" / "word2vec.kv"

    def audio_shard(self, shard: str) -> Path:
        return self.root / "features" / "audio" / f"shard-{shard}.npy"

    def audio_index(self, shard: str) -> Path:
        return self.root / "features" / "audio" / f"shard-{shard}.parquet"

    def image_shard(self, shard: str) -> Path:
        return self.root / "features" / "image" / f"shard-{shard}.npy"

    def image_index(self, shard: str) -> Path:
        return self.root / "features" / "image" / f"shard-{shard}.parquet"

    @property
    def audio_shard_names(self) -> list[str]:
        return [shard_name(i) for i in range(self.params["features"]["audio_shards"])]

    @property
    def image_shard_names(self) -> list[str]:
        return [shard_name(i) for i in range(self.params["features"]["image_shards"])]

    def model_dir(self, variant: str) -> Path:
        return self.root / "models" / variant

    def best_checkpoint(self, variant: str) -> Path:
        return self.model_dir(variant) / "best.pt"

    def last_checkpoint(self, variant: str) -> Path:
        return self.model_dir(variant) / "last.pt"

    def history(self, variant: str) -> Path:
        """Per-epoch training log (loss, recalls, time, memory) as CSV."""
        return self.model_dir(variant) / "history.csv"

    def train_metrics(self, variant: str) -> Path:
        return self.model_dir(variant) / "metrics.json"

    def tensors(self, variant: str) -> Path:
        """Test-set alignment tensors T in the Parquet exchange format."""
        return self.root / "tensors" / f"{variant}.parquet"

    def retrieval(self, variant: str) -> Path:
        """Test-set recall of one variant."""
        return self.root / "scores" / variant / "retrieval.json"

    def scores(self, variant: str) -> Path:
        """Per-pair AS/GS scores of one variant."""
        return self.root / "scores" / variant / "pairs.parquet"

    def score_summary(self, variant: str) -> Path:
        return self.root / "scores" / variant / "summary.json"

    def confusion(self, variant: str) -> Path:
        return self.root / "scores" / variant / "confusion.parquet"

    @property
    def baseline_scores(self) -> Path:
        return self.root / "scores" / "baseline" / "pairs.parquet"

    @property
    def baseline_summary(self) -> Path:
        return self.root / "scores" / "baseline" / "summary.json"

    # -- report -----------------------------------------------------------------

    def table(self, number: int, extension: str) -> Path:
        return self.root / f"table{number}.{extension}"

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    def figure(self, name: str, extension: str = "png") -> Path:
        return self.figures_dir / f"{name}.{extension}"

    @property
    def fig3(self) -> Path:
        return self.root / "fig3.png"

    @property
    def fig3_data(self) -> Path:
        """Per-category points behind Fig. 3, for ``dvc plots``."""
        return self.root / "fig3.csv"

    def figure_group(self, group: str) -> Path:
        """Folder of one kind of figure: ``fig3``, ``overlays``, ``training``, ``confusion``."""
        return self.figures_dir / group

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def metrics(self) -> Path:
        """Table 2 totals and recalls for ``dvc metrics``."""
        return self.root / "metrics.json"

    def log(self, stage: str, suffix: str = "") -> Path:
        return Path("logs") / self.params["run"] / (f"{stage}{'-' + suffix if suffix else ''}.log")
