"""The stage table shared by the Snakemake rules and the generated ``dvc.yaml``.

Each :class:`Stage` names its command, the parameters it reads (dotted keys),
its inputs and its outputs. ``workflow/rules/*.smk`` build their rules from it
and ``vgsalign dvc-yaml`` writes ``dvc.yaml`` from it, so the two pipelines
cannot drift apart; ``tests/test_workflow_sync.py`` checks both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vgsalign.config import lookup
from vgsalign.io import write_text_atomic
from vgsalign.layout import SHARD_PATTERN, VARIANT_PATTERN, RunPaths, names_vectors_file

PathList = list[str]
# The train section's keys that determine a trained model. train.device and
# train.num_workers only choose where and how fast it trains.
TRAINING_KEYS = ("epochs", "batch_size", "lr", "margin", "select_by", "patience", "amp", "recall_pools", "recall_pool_size")


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: a Snakemake rule and a DVC stage of the same name."""

    name: str
    command: str
    # "module:function" called by ``vgsalign <command>`` as function(params, paths[, wildcard]).
    entry: str
    # Keys whose values determine the outputs, so a change reruns the stage.
    params: tuple[str, ...]
    inputs: Callable[[RunPaths], PathList]
    outputs: Callable[[RunPaths], PathList]
    wildcard: str | None = None
    # Outputs DVC reports as metrics or plots instead of caching them.
    metrics: Callable[[RunPaths], PathList] = field(default=lambda paths: [])
    plots: Callable[[RunPaths], PathList] = field(default=lambda paths: [])
    # Outputs shown in `snakemake --report`: path -> (caption file under workflow/report,
    # category, file patterns inside a folder output or None).
    reports: Callable[[RunPaths], dict[str, tuple[str, str, list[str] | None]]] = field(default=lambda paths: {})
    enabled: Callable[[RunPaths], bool] = field(default=lambda paths: True)
    # Keys the stage also reads that change only its speed or the device it runs on
    # (batch size of inference, workers, device). Neither Snakemake nor DVC watches
    # them, so changing one never rebuilds features or retrains a model.
    speed_params: tuple[str, ...] = ()

    def cli(self, params_file: str, wildcard_value: str | None = None) -> str:
        """Return the shell command with the parameter file and wildcard filled in."""
        parts = ["python", "-m", "vgsalign", self.command, "--params", params_file]
        if self.wildcard is not None:
            parts += [f"--{self.wildcard}", wildcard_value if wildcard_value is not None else f"{{{self.wildcard}}}"]
        return " ".join(parts)

    def param_values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Return the values this stage depends on, keyed for Snakemake's ``params:``."""
        return {key.replace(".", "__"): lookup(params, key) for key in self.params}


def _str(paths: list[Path | str]) -> PathList:
    return [str(path) for path in paths]


def _speech_inputs(paths: RunPaths) -> PathList:
    """Speech folders the manifest reads (synthesised ones are outputs of synthesize_speech)."""
    if paths.synthesizes_speech:
        return _str([paths.speech_dir(split) for split in paths.coco_splits])
    speech = paths.params["data"]["speech"]
    if speech["format"] == "spokencoco":
        inputs = [paths.speech_root]
        if speech["alignments"]:
            inputs.append(Path(speech["alignments"]))
        return _str(inputs)
    return _str([paths.speech_dir(split) for split in paths.coco_splits])


def _coco_annotations(paths: RunPaths) -> PathList:
    files: list[Path] = []
    for split in paths.coco_splits:
        files += [paths.instances_file(split), paths.captions_file(split)]
    return _str(files)


def _audio_shards(paths: RunPaths) -> PathList:
    return _str(
        [f for shard in paths.audio_shard_names for f in (paths.audio_shard(shard), paths.audio_index(shard))]
    )


def _image_shards(paths: RunPaths) -> PathList:
    return _str(
        [f for shard in paths.image_shard_names for f in (paths.image_shard(shard), paths.image_index(shard))]
    )


def _variants(paths: RunPaths) -> list[str]:
    return list(paths.params["models"]["variants"])


def _report_inputs(paths: RunPaths) -> PathList:
    files: list[Path | str] = [paths.pairs, paths.similarities, paths.pairs_summary, paths.masks, paths.images]
    files += [paths.manifest, paths.baseline_scores, paths.baseline_summary]
    for variant in _variants(paths):
        files += [
            paths.train_metrics(variant),
            paths.history(variant),
            paths.retrieval(variant),
            paths.tensors(variant),
            paths.scores(variant),
            paths.score_summary(variant),
            paths.confusion(variant),
        ]
    return _str(files) + _audio_shards(paths) + _image_shards(paths)


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in [
        Stage(
            name="make_demo_corpus",
            command="demo-corpus",
            entry="vgsalign.demo:run",
            params=("seed", "demo", "data.train_split", "data.test_split"),
            inputs=lambda paths: [],
            outputs=lambda paths: _coco_annotations(paths)
            + _str([paths.image_dir(split) for split in paths.coco_splits]),
            enabled=lambda paths: paths.is_demo,
        ),
        Stage(
            name="synthesize_speech",
            command="synthesize",
            entry="vgsalign.speech.synthesize:run",
            params=("seed", "synthesis", "data.max_images", "data.train_split", "data.test_split"),
            inputs=lambda paths: _str([paths.captions_file(split) for split in paths.coco_splits]),
            outputs=lambda paths: _str([paths.speech_dir(split) for split in paths.coco_splits]),
            enabled=lambda paths: paths.synthesizes_speech,
        ),
        Stage(
            name="build_manifest",
            command="manifest",
            entry="vgsalign.manifest:run",
            params=("seed", "data"),
            inputs=lambda paths: _coco_annotations(paths)
            + _str([paths.image_dir(split) for split in paths.coco_splits])
            + _speech_inputs(paths),
            outputs=lambda paths: _str([paths.manifest, paths.images]),
        ),
        Stage(
            name="extract_nouns",
            command="nouns",
            entry="vgsalign.nouns:run",
            params=("nouns", "frames", "features.audio.sample_rate", "features.audio.hop_length"),
            inputs=lambda paths: _str([paths.manifest]),
            outputs=lambda paths: _str([paths.nouns]),
        ),
        Stage(
            name="pair_words_objects",
            command="pairs",
            entry="vgsalign.pairs:run",
            params=("seed", "pairs"),
            inputs=lambda paths: _str([paths.nouns, paths.manifest, paths.images])
            + _str([paths.instances_file(split) for split in paths.coco_splits])
            + ([paths.params["pairs"]["vectors"]] if _vectors_is_file(paths) else []),
            outputs=lambda paths: _str([paths.pairs, paths.similarities, paths.masks, paths.pairs_summary]),
        ),
        Stage(
            name="extract_audio_features",
            command="audio-features",
            entry="vgsalign.features.audio:run",
            params=("features.audio", "features.dtype", "features.audio_shards", "frames.window", "frames.convention"),
            inputs=lambda paths: _str([paths.manifest]),
            outputs=lambda paths: _str([paths.audio_shard(SHARD_PATTERN), paths.audio_index(SHARD_PATTERN)]),
            wildcard="shard",
        ),
        Stage(
            name="extract_image_features",
            command="image-features",
            entry="vgsalign.features.image:run",
            params=(
                "seed",
                "features.image.weights",
                "features.image.resize",
                "features.dtype",
                "features.image_shards",
            ),
            speed_params=("features.image.batch_size", "features.image.num_workers", "features.device"),
            inputs=lambda paths: _str([paths.images]),
            outputs=lambda paths: _str([paths.image_shard(SHARD_PATTERN), paths.image_index(SHARD_PATTERN)]),
            wildcard="shard",
        ),
        Stage(
            name="train_model",
            command="train",
            entry="vgsalign.training.train:run",
            params=("seed", "models.width", "models.dropout", "models.cnn0_pooling")
            + tuple(f"train.{key}" for key in TRAINING_KEYS),
            speed_params=("train.device", "train.num_workers"),
            inputs=lambda paths: _str([paths.manifest]) + _audio_shards(paths) + _image_shards(paths),
            outputs=lambda paths: _str(
                [
                    paths.best_checkpoint(VARIANT_PATTERN),
                    paths.history(VARIANT_PATTERN),
                    paths.train_metrics(VARIANT_PATTERN),
                ]
            ),
            wildcard="variant",
            plots=lambda paths: _str([paths.history(VARIANT_PATTERN)]),
        ),
        Stage(
            name="export_tensors",
            command="export",
            entry="vgsalign.export:run",
            params=("seed", "export", "frames.window", "frames.convention", "train.recall_pools", "train.recall_pool_size"),
            speed_params=("train.device",),
            inputs=lambda paths: _str([paths.manifest, paths.best_checkpoint(VARIANT_PATTERN)])
            + _audio_shards(paths)
            + _image_shards(paths),
            outputs=lambda paths: _str([paths.tensors(VARIANT_PATTERN), paths.retrieval(VARIANT_PATTERN)]),
            wildcard="variant",
        ),
        Stage(
            name="score_alignments",
            command="score",
            entry="vgsalign.scoring.stage:run",
            params=("seed", "scoring"),
            inputs=lambda paths: _str([paths.tensors(VARIANT_PATTERN), paths.pairs, paths.masks]),
            outputs=lambda paths: _str(
                [
                    paths.scores(VARIANT_PATTERN),
                    paths.score_summary(VARIANT_PATTERN),
                    paths.confusion(VARIANT_PATTERN),
                ]
            ),
            wildcard="variant",
        ),
        Stage(
            name="score_baseline",
            command="baseline",
            entry="vgsalign.scoring.stage:run_baseline",
            params=("seed", "scoring"),
            inputs=lambda paths: _str([paths.pairs, paths.masks]),
            outputs=lambda paths: _str([paths.baseline_scores, paths.baseline_summary]),
        ),
        Stage(
            name="make_report",
            command="report",
            entry="vgsalign.report.stage:run",
            params=("seed", "report", "scoring", "models.variants", "pairs.threshold", "frames.window"),
            inputs=_report_inputs,
            outputs=lambda paths: _str(
                [
                    paths.table(1, "md"),
                    paths.table(1, "csv"),
                    paths.table(1, "tex"),
                    paths.table(2, "md"),
                    paths.table(2, "csv"),
                    paths.table(2, "tex"),
                    paths.fig3,
                    paths.fig3.with_suffix(".pdf"),
                    paths.fig3_data,
                    paths.figure_group("fig3"),
                    paths.figure_group("overlays"),
                    paths.figure_group("training"),
                    paths.figure_group("confusion"),
                    paths.figure("similarities", "png"),
                    paths.figure("similarities", "pdf"),
                    paths.report,
                    paths.metrics,
                ]
            ),
            metrics=lambda paths: _str([paths.metrics]),
            plots=lambda paths: _str([paths.fig3_data]),
            reports=lambda paths: {
                str(paths.table(1, "csv")): ("table1.rst", "Tables", None),
                str(paths.table(2, "csv")): ("table2.rst", "Tables", None),
                str(paths.fig3): ("fig3.rst", "Figures", None),
                str(paths.figure_group("fig3")): ("fig3.rst", "Figures", ["{convention}.png"]),
                str(paths.figure_group("overlays")): ("overlays.rst", "Alignment overlays", ["{name}.png"]),
                str(paths.figure_group("training")): ("training_curves.rst", "Training curves", ["{variant}.png"]),
                str(paths.figure_group("confusion")): ("confusion.rst", "Confusion matrices", ["{name}.png"]),
                str(paths.figure("similarities", "png")): ("similarities.rst", "Figures", None),
                str(paths.report): ("report.rst", "Report", None),
            },
        ),
    ]
}


def _vectors_is_file(paths: RunPaths) -> bool:
    """True when ``pairs.vectors`` names a local file (not null, not a gensim.downloader name)."""
    vectors = paths.params["pairs"]["vectors"]
    return bool(vectors) and names_vectors_file(vectors)


def wildcard_values(stage: Stage, paths: RunPaths) -> list[str]:
    """Return the values the stage's wildcard takes in this run."""
    if stage.wildcard == "variant":
        return _variants(paths)
    if stage.wildcard == "shard":
        if stage.name == "extract_audio_features":
            return paths.audio_shard_names
        return paths.image_shard_names
    return []


def final_outputs(paths: RunPaths) -> PathList:
    """Return the files that ``rule all`` requests: the report and everything it lists."""
    return STAGES["make_report"].outputs(paths)


def enabled_stages(paths: RunPaths) -> list[Stage]:
    return [stage for stage in STAGES.values() if stage.enabled(paths)]


def resolved_params_file(paths: RunPaths) -> Path:
    return paths.root / "params.resolved.yaml"


def write_resolved_params(params: Mapping[str, Any], paths: RunPaths) -> str:
    """Write the merged parameters to ``results/<run>/params.resolved.yaml`` and return its path.

    The file is rewritten only when its content changes, so its timestamp never
    triggers a rerun; Snakemake reruns a rule when the values in its ``params:`` change.
    """
    target = resolved_params_file(paths)
    text = "# Resolved parameters of this run, written by the Snakefile. Do not edit.\n"
    text += yaml.safe_dump(_plain(params), sort_keys=False)
    if not target.is_file() or target.read_text() != text:
        write_text_atomic(target, text)
    return str(target)


def _plain(value: Any) -> Any:
    """Convert Snakemake's config objects into plain dicts and lists for YAML."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def producer_of(path: str, paths: RunPaths) -> str | None:
    """Return the name of the stage of this run whose outputs include ``path``, or None for raw data."""
    for stage in enabled_stages(paths):
        for pattern in stage.outputs(paths):
            regex = re.escape(pattern)
            for wildcard in ("variant", "shard"):
                regex = regex.replace(re.escape(f"{{{wildcard}}}"), r"[^/]+")
            if re.fullmatch(regex, path):
                return stage.name
    return None


def missing_raw_inputs(paths: RunPaths) -> list[str]:
    """Return the inputs that no stage of this run writes and that do not exist (data, vectors)."""
    missing = []
    for stage in enabled_stages(paths):
        for path in stage.inputs(paths):
            if "{" in path or path in missing or Path(path).exists():
                continue
            if producer_of(path, paths) is None:
                missing.append(path)
    return missing
