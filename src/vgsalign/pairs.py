"""Stage ``pair_words_objects``: pair caption nouns with the objects of their image by word2vec similarity.

The rule of Khorrami and Räsänen (Interspeech 2021) and of their released code
(github.com/khazarkhorrami/VGS_alignment, ``step_1/``):

1. A test caption without word time stamps (SpokenCOCO without an alignment
   file) has no nouns with frames and is dropped as ``no_word_times``.
   A test caption is dropped when it has no noun (``no_nouns``) or when any
   of its nouns is out of the vocabulary (``oov_noun``). With
   ``pairs.keep_oov_captions: true`` only those nouns are dropped, and a
   caption left without a noun is dropped as ``no_nouns_in_vocabulary``.
   A caption whose image has no object is dropped as ``no_objects``.
2. Each noun is compared with every category present in the image (a category
   with at least one non-crowd instance whose mask has a pixel). A multi-word
   label ("dining table") is the mean of its words' vectors, as gensim's
   ``n_similarity`` computes it: cosine(noun, mean of the label's raw vectors).
3. The noun is paired with the best label when that similarity is
   ``>= pairs.threshold``. On a tie the label whose first instance comes first
   in the annotation file wins.

A noun is looked up as written (lower case), then without a possessive "'s",
then with hyphens as underscores (GoogleNews stores phrases as "hot_dog"),
then without hyphens. The first form found in the vocabulary is used. A label word
missing from the vocabulary is left out of the label's mean, as gensim 4's
``n_similarity`` does; a label with no word in the vocabulary is compared with
no noun. Both cases are logged and listed in the summary.
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from gensim.models import KeyedVectors, Word2Vec

from vgsalign import coco, nouns
from vgsalign.io import atomic_path, read_parquet_metadata, write_json_atomic, write_parquet_atomic
from vgsalign.layout import RunPaths, names_vectors_file

logger = logging.getLogger(__name__)

SELF_TRAINED = "self-trained"
DROP_REASONS = ("no_word_times", "no_nouns", "oov_noun", "no_nouns_in_vocabulary", "no_objects")
PAIR_COLUMNS = [
    "pair_id",
    "caption_id",
    "image_id",
    "word_index",
    "word",
    "start_ms",
    "end_ms",
    "frame_start",
    "frame_end",
    "category_id",
    "category_name",
    "similarity",
]
SIMILARITY_COLUMNS = [
    "caption_id",
    "image_id",
    "word_index",
    "word",
    "vector_word",
    "category_id",
    "category_name",
    "label_order",
    "similarity",
    "is_best",
    "paired",
]
_PICKLE_MAGIC = b"\x80"
_WORD2VEC_HEADER = re.compile(rb"^\s*(\d+)\s+(\d+)\s*$")


class VectorsError(ValueError):
    """Word vectors that cannot be loaded. The message names the file or key and the fix."""


# -- word vectors ---------------------------------------------------------------------


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _vector_format(path: Path) -> str:
    """Return ``native``, ``word2vec_binary`` or ``word2vec_text`` from the file's first bytes."""
    with _open_bytes(path) as handle:
        first = handle.read(1)
        if first == _PICKLE_MAGIC:
            return "native"
        header = first + handle.readline(256)
        match = _WORD2VEC_HEADER.match(header)
        if not match:
            raise VectorsError(
                f"word vectors file {path} is neither a word2vec file (first line '<count> <dimension>') "
                "nor a gensim KeyedVectors file. Set pairs.vectors to a word2vec binary or text file "
                "(such as GoogleNews-vectors-negative300.bin) or a KeyedVectors .kv file, or to null to "
                "train Word2Vec on the captions."
            )
        if ".bin" in path.suffixes:
            return "word2vec_binary"
        line = handle.readline(1 << 16)
    try:
        fields = line.decode("utf-8").split()
    except UnicodeDecodeError:
        return "word2vec_binary"
    return "word2vec_text" if len(fields) == int(match.group(2)) + 1 else "word2vec_binary"


def load_vectors(spec: str) -> tuple[KeyedVectors, str]:
    """Load word vectors from a file or a gensim.downloader name; return them and their source.

    Files: gensim KeyedVectors (``.kv``, pickled), word2vec binary or word2vec
    text, optionally gzipped; the format is read from the file's first bytes.
    A value without a dot or a path separator is a gensim.downloader name, which
    needs network access the first time.
    """
    path = Path(spec)
    if path.is_dir():
        raise VectorsError(f"pairs.vectors {spec} is a directory. Point it at the vectors file inside it.")
    if path.is_file():
        if path.stat().st_size == 0:
            raise VectorsError(
                f"word vectors file {path} is empty. Download it again (GoogleNews-vectors-negative300.bin "
                "is about 1.6 GB), or set pairs.vectors to null to train Word2Vec on the captions."
            )
        kind = _vector_format(path)
        try:
            if kind == "native":
                vectors = KeyedVectors.load(str(path))
            else:
                vectors = KeyedVectors.load_word2vec_format(str(path), binary=kind == "word2vec_binary")
        except (OSError, ValueError, EOFError, UnicodeDecodeError, AttributeError, ImportError) as error:
            raise VectorsError(
                f"cannot read word vectors file {path} as {kind.replace('_', ' ')} ({type(error).__name__}: "
                f"{error}). The file may be truncated: download it again, or set pairs.vectors to another file."
            ) from error
        if not isinstance(vectors, KeyedVectors):
            raise VectorsError(
                f"{path} contains a pickled {type(vectors).__name__}, not gensim KeyedVectors. Save the vectors "
                "with model.wv.save(...) and point pairs.vectors at that file."
            )
        logger.info("loaded %d word vectors of dimension %d from %s", len(vectors), vectors.vector_size, path)
        return vectors, str(path)
    if names_vectors_file(spec):
        raise VectorsError(
            f"word vectors file not found: {path}. Download it (for the paper: GoogleNews-vectors-negative300.bin), "
            "fix pairs.vectors, or set pairs.vectors to null to train Word2Vec on the captions."
        )
    return _download_vectors(spec), f"gensim-downloader:{spec}"


def _download_vectors(name: str) -> KeyedVectors:
    import gensim.downloader

    logger.info("loading word vectors %r with gensim.downloader (downloads on first use)", name)
    try:
        vectors = gensim.downloader.load(name)
    except (OSError, ValueError, RuntimeError) as error:
        raise VectorsError(
            f"could not load word vectors {name!r} with gensim.downloader ({type(error).__name__}: {error}). "
            "It needs network access the first time; offline, download them elsewhere and set pairs.vectors "
            "to the file, or set pairs.vectors to null to train Word2Vec on the captions. Also check that "
            f"{name!r} is a name that gensim.downloader.info() lists."
        ) from error
    if not isinstance(vectors, KeyedVectors):
        raise VectorsError(f"gensim.downloader name {name!r} is a corpus, not word vectors. Choose a model name.")
    return vectors


def _stable_hash(text: str) -> int:
    """Hash independent of PYTHONHASHSEED, so Word2Vec's initial vectors repeat across processes."""
    return zlib.crc32(text.encode("utf-8"))


def caption_sentences(captions: pd.DataFrame) -> list[list[str]]:
    """Return each caption as lower-case tokens, normalised as nouns are (:func:`vgsalign.nouns.normalize_word`).

    The tokens are the speech words; a caption without words uses its text split at whitespace.
    """
    sentences = []
    for text, words in zip(captions["text"], captions["words"]):
        raw = [str(word["word"]) for word in words] if words is not None and len(words) else str(text).split()
        tokens = [token for token in (nouns.normalize_word(word) for word in raw) if token]
        if tokens:
            sentences.append(tokens)
    return sentences


def train_word2vec(sentences: Sequence[Sequence[str]], settings: Mapping[str, Any], seed: int) -> KeyedVectors:
    """Train Word2Vec on ``sentences`` with one worker (deterministic for a seed) and return its vectors."""
    if not sentences:
        raise VectorsError("pairs.vectors is null but the manifest has no caption to train Word2Vec on.")
    model = Word2Vec(
        sentences=[list(sentence) for sentence in sentences],
        vector_size=int(settings["vector_size"]),
        window=int(settings["window"]),
        min_count=int(settings["min_count"]),
        epochs=int(settings["epochs"]),
        seed=int(seed),
        workers=1,
        hashfxn=_stable_hash,
    )
    return model.wv


def save_vectors(vectors: KeyedVectors, path: Path) -> None:
    """Save KeyedVectors atomically as one file (no separate ``.npy`` arrays)."""
    with atomic_path(path) as temporary:
        vectors.save(str(temporary), separately=[])


# -- similarities ----------------------------------------------------------------------


def lookup_forms(word: str) -> list[str]:
    """Return the forms of a noun tried in the vocabulary, in order (see the module docstring)."""
    forms = [word]
    for suffix in ("'s", "’s", "'", "’"):
        if word.endswith(suffix) and len(word) > len(suffix):
            forms.append(word[: -len(suffix)])
            break
    if "-" in word:
        forms += [word.replace("-", "_"), word.replace("-", "")]
    return list(dict.fromkeys(forms))


def vector_word(word: str, vectors: KeyedVectors) -> str | None:
    """Return the first form of ``word`` that the vectors contain, or None."""
    for form in lookup_forms(word):
        if form in vectors.key_to_index:
            return form
    return None


def label_words(label: str) -> list[str]:
    """Return the words of a category label ("dining table" -> ["dining", "table"])."""
    return re.findall(r"\w+", label)


def label_vectors(
    labels: Mapping[int, str], vectors: KeyedVectors
) -> tuple[dict[int, np.ndarray], dict[str, list[str]]]:
    """Return each label's unit mean vector (float64) and, per label, its words missing from the vectors.

    A label with no word in the vocabulary gets no vector.
    """
    result: dict[int, np.ndarray] = {}
    missing: dict[str, list[str]] = {}
    for category_id, label in labels.items():
        words = label_words(label)
        known = [word for word in words if word in vectors.key_to_index]
        absent = [word for word in words if word not in vectors.key_to_index]
        if absent:
            missing[label] = absent
        if not known:
            continue
        mean = np.mean([vectors[word].astype(np.float64) for word in known], axis=0)
        norm = np.linalg.norm(mean)
        if norm > 0:
            result[category_id] = mean / norm
    return result, missing


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = vector.astype(np.float64)
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector


def _compare_caption(
    caption_id: int,
    image_id: int,
    words: pd.DataFrame,
    forms: list[str],
    labels: pd.DataFrame,
    unit_labels: Mapping[int, np.ndarray],
    vectors: KeyedVectors,
    threshold: float,
) -> tuple[list[tuple], list[tuple]]:
    """Compare the in-vocabulary nouns of one caption with its image's labels.

    ``words`` are noun rows, ``forms`` their vocabulary forms, ``labels`` the
    present categories with a vector, in annotation order. Returns the pair
    rows and the similarity rows (without ``pair_id``).
    """
    noun_matrix = np.stack([_unit(vectors[form]) for form in forms])  # [N, D]
    label_matrix = np.stack([unit_labels[c] for c in labels["category_id"]])  # [L, D]
    similarity = noun_matrix @ label_matrix.T  # [N, L]
    best = np.argmax(similarity, axis=1)  # the first maximum, so annotation order breaks ties
    label_rows = list(labels.itertuples(index=False))

    pair_rows, similarity_rows = [], []
    for row, (noun, form) in enumerate(zip(words.itertuples(index=False), forms)):
        best_similarity = float(similarity[row, best[row]])
        paired = best_similarity >= threshold
        for column, label in enumerate(label_rows):
            is_best = column == best[row]
            similarity_rows.append(
                (
                    caption_id,
                    image_id,
                    int(noun.word_index),
                    noun.word,
                    form,
                    int(label.category_id),
                    label.category_name,
                    int(label.label_order),
                    float(similarity[row, column]),
                    is_best,
                    paired and is_best,
                )
            )
        if paired:
            label = label_rows[int(best[row])]
            pair_rows.append(
                (
                    caption_id,
                    image_id,
                    int(noun.word_index),
                    noun.word,
                    float(noun.start_ms),
                    float(noun.end_ms),
                    int(noun.frame_start),
                    int(noun.frame_end),
                    int(label.category_id),
                    str(label.category_name),
                    best_similarity,
                )
            )
    return pair_rows, similarity_rows


def _pairs_table(pair_rows: list[tuple]) -> pd.DataFrame:
    pairs = pd.DataFrame(pair_rows, columns=PAIR_COLUMNS[1:])
    pairs.insert(0, "pair_id", np.arange(len(pairs), dtype=np.int64))
    integer_columns = ["caption_id", "image_id", "word_index", "frame_start", "frame_end", "category_id"]
    return pairs.astype({column: "int64" for column in integer_columns})


def pair_captions(
    captions: pd.DataFrame,
    noun_table: pd.DataFrame,
    present: pd.DataFrame,
    vectors: KeyedVectors,
    *,
    threshold: float,
    keep_oov_captions: bool,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Apply the pairing rule of the module docstring.

    ``captions``: ``caption_id``, ``image_id`` of the test captions, and
    optionally ``has_word_times``: a caption without nouns and without word
    times is dropped as ``no_word_times`` instead of ``no_nouns``.
    ``noun_table``: the nouns stage's table. ``present``: ``image_id``,
    ``category_id``, ``category_name``, ``label_order`` of every category
    present in each image. Returns the pairs table, the similarities table
    (every noun x present label of the kept captions) and the counts.
    """
    labels = dict(zip(present["category_id"], present["category_name"]))
    unit_labels, missing_words = label_vectors(labels, vectors)
    for label, words in sorted(missing_words.items()):
        logger.warning("category label %r: words %s are not in the vocabulary; they are left out of its mean", label, words)
    no_vector = sorted(labels[c] for c in labels if c not in unit_labels)
    if no_vector:
        logger.warning("category labels without any word in the vocabulary, never paired: %s", no_vector)

    images_with_objects = set(present["image_id"].astype(int))
    present = present.loc[present["category_id"].isin(list(unit_labels))]
    present = present.sort_values(["image_id", "label_order"], kind="stable")
    image_labels = {int(image_id): group for image_id, group in present.groupby("image_id", sort=False)}
    caption_nouns = {caption_id: group for caption_id, group in noun_table.groupby("caption_id", sort=False)}
    dropped = Counter({reason: 0 for reason in DROP_REASONS})
    noun_counts: Counter = Counter()
    pair_rows, similarity_rows = [], []

    timed = captions["has_word_times"] if "has_word_times" in captions else pd.Series(True, index=captions.index)
    for caption_id, image_id, has_word_times in zip(
        captions["caption_id"].astype(int), captions["image_id"].astype(int), timed.astype(bool)
    ):
        words = caption_nouns.get(caption_id)
        if words is None or words.empty:
            dropped["no_nouns" if has_word_times else "no_word_times"] += 1
            continue
        words = words.sort_values("word_index")
        forms = [vector_word(word, vectors) for word in words["word"]]
        known = np.array([form is not None for form in forms], dtype=bool)
        noun_counts["read"] += len(words)
        noun_counts["out_of_vocabulary"] += int((~known).sum())
        if not known.all() and not keep_oov_captions:
            dropped["oov_noun"] += 1
            continue
        if not known.any():
            dropped["no_nouns_in_vocabulary"] += 1
            continue
        if image_id not in images_with_objects:
            dropped["no_objects"] += 1
            continue

        noun_counts["compared"] += int(known.sum())
        if image_id not in image_labels:
            continue  # every label of the image lacks a vector
        new_pairs, new_similarities = _compare_caption(
            caption_id,
            image_id,
            words.loc[known],
            [form for form in forms if form is not None],
            image_labels[image_id],
            unit_labels,
            vectors,
            threshold,
        )
        pair_rows += new_pairs
        similarity_rows += new_similarities
        noun_counts["paired"] += len(new_pairs)
        noun_counts["below_threshold"] += int(known.sum()) - len(new_pairs)

    pairs = _pairs_table(pair_rows)
    similarities = pd.DataFrame(similarity_rows, columns=SIMILARITY_COLUMNS)
    captions_read = len(captions)
    captions_kept = captions_read - sum(dropped.values())
    with_pairs = int(pairs["caption_id"].nunique())
    noun_keys = ("read", "out_of_vocabulary", "compared", "paired", "below_threshold")
    counts = {
        "captions_read": captions_read,
        "captions_dropped": dict(dropped),
        "captions_kept": captions_kept,
        "captions_with_pairs": with_pairs,
        "captions_without_pair": captions_kept - with_pairs,
        "nouns": {key: int(noun_counts[key]) for key in noun_keys},
        "pairs": int(len(pairs)),
        "label_words_missing": missing_words,
        "labels_without_vector": no_vector,
    }
    return pairs, similarities, counts


def plot_similarity_histogram(
    similarities: pd.DataFrame, threshold: float, path: str | Path, bins: int = 80
) -> dict[str, np.ndarray]:
    """Draw the histogram of every noun-label similarity and of the best label per noun, threshold marked.

    Writes the figure to ``path`` (format from the suffix) and returns the
    bin ``edges`` over [-1, 1] and the counts ``every`` and ``best``.
    """
    from matplotlib.figure import Figure

    edges = np.linspace(-1.0, 1.0, bins + 1)
    every, _ = np.histogram(similarities["similarity"], bins=edges)
    best, _ = np.histogram(similarities.loc[similarities["is_best"], "similarity"], bins=edges)

    figure = Figure(figsize=(6, 3.5))
    axis = figure.subplots()
    axis.stairs(every, edges, fill=True, alpha=0.5, label="every noun x present label")
    axis.stairs(best, edges, fill=True, alpha=0.7, label="best label per noun")
    axis.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}")
    axis.set_xlabel("word2vec cosine similarity")
    axis.set_ylabel("count")
    axis.legend(fontsize="small")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=Path(path).suffix.lstrip(".") or "png")
    return {"edges": edges, "every": every, "best": best}


# -- the stage -----------------------------------------------------------------------


def _vectors_for_run(params: Mapping[str, Any], paths: RunPaths, manifest: pd.DataFrame) -> tuple[KeyedVectors, str]:
    spec = params["pairs"]["vectors"]
    if spec:
        return load_vectors(spec)
    sentences = caption_sentences(manifest)
    logger.warning(
        "pairs.vectors is null: training Word2Vec on the %d manifest captions instead of pretrained vectors "
        "(Khorrami and Räsänen used GoogleNews word2vec), so similarities and pairs differ from theirs.",
        len(sentences),
    )
    vectors = train_word2vec(sentences, params["pairs"]["word2vec"], params["seed"])
    save_vectors(vectors, paths.word_vectors)
    return vectors, SELF_TRAINED


def run(params: Mapping[str, Any], paths: RunPaths) -> None:
    """Write the pairs, similarities, masks and summary of the test captions."""
    settings = params["pairs"]
    manifest = pq.read_table(paths.manifest).to_pandas()
    test = manifest.loc[manifest["split"] == "test"]
    noun_table = pq.read_table(paths.nouns).to_pandas()
    noun_metadata = read_parquet_metadata(paths.nouns)
    images = pq.read_table(paths.images).to_pandas()
    test_images = images.loc[images["split"] == "test"]
    # Vectors first: a missing vectors file fails before minutes of mask building.
    vectors, source = _vectors_for_run(params, paths, manifest)

    mask_tables, mask_counts = [], Counter()
    for coco_split, group in test_images.groupby("coco_split", sort=True):
        instances = coco.read_instances(paths.instances_file(coco_split))
        masks, counts = coco.build_masks(instances, group["image_id"])
        mask_tables.append(masks)
        mask_counts.update(instances.counts)
        mask_counts.update(counts)
    masks = pd.concat(mask_tables, ignore_index=True) if mask_tables else pd.DataFrame(columns=coco.MASK_TABLE_COLUMNS)

    has_word_times = test["words"].map(lambda words: words is not None and len(words) > 0)
    pairs, similarities, counts = pair_captions(
        test[["caption_id", "image_id"]].assign(has_word_times=has_word_times),
        noun_table,
        masks[["image_id", "category_id", "category_name", "label_order"]],
        vectors,
        threshold=float(settings["threshold"]),
        keep_oov_captions=bool(settings["keep_oov_captions"]),
    )

    per_category = pairs["category_name"].value_counts().to_dict()
    summary = {
        **counts,
        "pairs_per_category": {name: int(per_category.get(name, 0)) for name in sorted(set(masks["category_name"]))},
        "vectors_source": source,
        "vectors_self_trained": source == SELF_TRAINED,
        "tagger": noun_metadata.get("tagger"),
        "threshold": float(settings["threshold"]),
        "keep_oov_captions": bool(settings["keep_oov_captions"]),
        "frames": noun_metadata.get("frames"),
        "masks": {key: int(value) for key, value in sorted(mask_counts.items())},
    }

    metadata = {"vectors_source": source, "threshold": summary["threshold"], "tagger": summary["tagger"]}
    # The frame convention lets `vgsalign score-tensors` check external tensors against the pairs.
    write_parquet_atomic(paths.pairs, pairs, metadata={**metadata, "frames": summary["frames"]})
    write_parquet_atomic(paths.similarities, similarities, metadata=metadata)
    write_parquet_atomic(paths.masks, masks, metadata={"mask_size": coco.MASK_SIZE, **metadata})
    write_json_atomic(paths.pairs_summary, summary)
    logger.info(
        "pairs: %d pairs from %d of %d test captions; dropped %s; vectors: %s",
        summary["pairs"],
        summary["captions_with_pairs"],
        summary["captions_read"],
        ", ".join(f"{reason} {number}" for reason, number in summary["captions_dropped"].items()),
        source,
    )

