"""Stage ``extract_nouns``: POS-tag the test captions and keep the nouns with their frame intervals.

Each caption is tagged as one sentence, because a tagger needs the context
("stop sign" vs "stop"). The tagger's tokens rarely match the speech words one
to one. The speech metadata keeps "children's" and "close-up" whole, may spell
"3" as "three", and adds fillers such as "um". So tags are mapped back to the
speech words through their characters (:func:`align_tags`).

Taggers (``nouns.tagger``):

``nltk``
    NLTK's averaged perceptron tagger (the resource
    ``taggers/averaged_perceptron_tagger_eng`` under ``NLTK_DATA``), on tokens
    from NLTK's Treebank-style word tokenizer, which needs no data files.
``pattern``
    textblob's ``PatternTagger``, which ships its lexicon and works offline.
``auto``
    ``nltk`` when its model is installed, else ``pattern``.

The tagger actually used is stored in the output's metadata. Filler words
(:data:`FILLERS`) are never nouns, whatever their tag.
"""

from __future__ import annotations

import difflib
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from tqdm import tqdm

from vgsalign import frames
from vgsalign.io import write_parquet_atomic
from vgsalign.layout import RunPaths

logger = logging.getLogger(__name__)

NLTK_RESOURCE = "taggers/averaged_perceptron_tagger_eng/"
TAGGERS = ("auto", "nltk", "pattern")
# Disfluency fillers: SPEECH-COCO inserts "um" and "uh" as words of their own.
FILLERS = frozenset({"um", "uh", "umm", "uhm", "er", "erm", "hmm"})
NOUN_COLUMNS = [
    "caption_id",
    "image_id",
    "word_index",
    "word",
    "tag",
    "start_ms",
    "end_ms",
    "frame_start",
    "frame_end",
]

Tagger = Callable[[str], list[tuple[str, str]]]

_EDGE_PUNCTUATION = re.compile(r"^[\W_]+|[\W_]+$")
_NOT_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


class TaggerError(RuntimeError):
    """The requested POS tagger is not installed."""


# -- taggers ------------------------------------------------------------------------


def nltk_tagger_available() -> bool:
    """Return True when NLTK's averaged perceptron tagger model is installed."""
    import nltk

    try:
        nltk.data.find(NLTK_RESOURCE)
    except LookupError:
        return False
    return True


def make_tagger(name: str) -> tuple[Tagger, str]:
    """Return a function that tags a caption string, and the name of the tagger chosen."""
    if name not in TAGGERS:
        raise TaggerError(f"invalid nouns.tagger {name!r}: use one of {', '.join(TAGGERS)}")
    if name == "auto":
        name = "nltk" if nltk_tagger_available() else "pattern"
        logger.info("nouns.tagger auto: using %s", name)
    if name == "nltk":
        if not nltk_tagger_available():
            raise TaggerError(
                f"NLTK's tagger model ({NLTK_RESOURCE}) is not installed. Install it with "
                "`python -m nltk.downloader averaged_perceptron_tagger_eng` (network needed) and point "
                "NLTK_DATA at it, or set nouns.tagger to pattern or auto."
            )
        from nltk.tag.perceptron import PerceptronTagger
        from nltk.tokenize import NLTKWordTokenizer

        perceptron = PerceptronTagger()
        tokenizer = NLTKWordTokenizer()
        return (lambda text: perceptron.tag(tokenizer.tokenize(text))), "nltk"

    from textblob.en.taggers import PatternTagger

    pattern = PatternTagger()
    return (lambda text: [(str(token), str(tag)) for token, tag in pattern.tag(text)]), "pattern"


# -- words and alignment -----------------------------------------------------------


def normalize_word(word: str) -> str:
    """Return the word in lower case without leading or trailing punctuation ("Dog's," -> "dog's")."""
    return _EDGE_PUNCTUATION.sub("", unicodedata.normalize("NFKC", word).lower())


def alignment_key(token: str) -> str:
    """Return the lower-case ASCII letters and digits of a token, the form compared in alignment."""
    decomposed = unicodedata.normalize("NFKD", token.lower())
    ascii_only = "".join(char for char in decomposed if not unicodedata.combining(char))
    return _NOT_ALPHANUMERIC.sub("", ascii_only)


def _owners(keys: Sequence[str]) -> np.ndarray:
    return np.repeat(np.arange(len(keys)), [len(key) for key in keys])


def align_tags(words: Sequence[str], tagged: Sequence[tuple[str, str]]) -> list[str | None]:
    """Return the tag of each speech word, mapped from the tagger's tokens through their characters.

    Both sides are reduced to :func:`alignment_key` characters. Matching
    characters vote for the token they belong to, and a run of characters that
    differs ("3" against "three") is spread evenly over the differing tokens.
    A word takes the tag of the token with most votes (the first one on a tie),
    so "children's" takes the tag of "children", and both "hot" and "dog" take
    the tag of a token "hot-dog". A word with no vote (a filler absent from the
    text, or punctuation) gets None.
    """
    word_keys = [alignment_key(word) for word in words]
    token_keys = [alignment_key(token) for token, _ in tagged]
    word_chars, token_chars = "".join(word_keys), "".join(token_keys)
    word_owner, token_owner = _owners(word_keys), _owners(token_keys)
    votes = np.zeros((len(words), max(len(tagged), 1)), dtype=np.int64)

    if word_chars == token_chars:
        np.add.at(votes, (word_owner, token_owner), 1)
    else:
        matcher = difflib.SequenceMatcher(None, token_chars, word_chars, autojunk=False)
        for operation, token_start, token_end, word_start, word_end in matcher.get_opcodes():
            if operation == "equal":
                np.add.at(votes, (word_owner[word_start:word_end], token_owner[token_start:token_end]), 1)
            elif operation == "replace":
                positions = np.arange(word_start, word_end)
                mapped = token_start + (positions - word_start) * (token_end - token_start) // (word_end - word_start)
                np.add.at(votes, (word_owner[positions], token_owner[mapped]), 1)

    tags: list[str | None] = []
    for row in votes:
        tags.append(tagged[int(np.argmax(row))][1] if row.any() else None)
    return tags


def tag_caption(words: Sequence[str], text: str, tagger: Tagger) -> list[str | None]:
    """Tag ``text`` as one sentence and return the tag of each speech word (see :func:`align_tags`).

    When ``text`` is empty the speech words, joined by spaces, are tagged instead.
    The sentence is tagged in lower case, so that SpokenCOCO's upper-case
    transcripts and SPEECH-COCO's sentence-case captions get the same tags. The
    pattern tagger, for one, tags upper-case "STREET" as a proper noun (NNP),
    which is not kept.
    """
    sentence = text if text and text.strip() else " ".join(words)
    return align_tags(words, tagger(sentence.lower()))


# -- the stage ---------------------------------------------------------------------


def caption_nouns(
    captions: pd.DataFrame, tagger: Tagger, tags: Sequence[str], progress: bool = True
) -> tuple[pd.DataFrame, Counter]:
    """Tag every caption and return one row per noun, before frame assignment.

    ``captions`` needs ``caption_id``, ``image_id``, ``text`` and ``words``
    (list of ``{word, start_ms, end_ms}``). The rows have ``caption_id``,
    ``image_id``, ``word_index``, ``word`` (see :func:`normalize_word`),
    ``tag``, ``start_ms``, ``end_ms`` and ``is_last`` (the word is the last of
    its caption). Counts: ``captions``, ``words``, ``fillers``,
    ``untagged_words`` (words with letters or digits that no token matched),
    ``nouns`` and ``captions_without_nouns``.
    """
    keep = set(tags)
    counts: Counter = Counter()
    rows = []
    for caption in tqdm(captions.itertuples(index=False), total=len(captions), desc="tagging", disable=not progress, mininterval=5):
        words = list(caption.words) if caption.words is not None else []
        spoken = [str(word["word"]) for word in words]
        word_tags = tag_caption(spoken, str(caption.text or ""), tagger) if words else []
        counts["captions"] += 1
        counts["words"] += len(words)
        found = 0
        for index, (word, tag) in enumerate(zip(words, word_tags)):
            normalized = normalize_word(str(word["word"]))
            if normalized in FILLERS:
                counts["fillers"] += 1
                continue
            if tag is None:
                counts["untagged_words"] += int(bool(alignment_key(normalized)))
                continue
            if tag not in keep or not normalized:
                continue
            rows.append(
                (
                    int(caption.caption_id),
                    int(caption.image_id),
                    index,
                    normalized,
                    tag,
                    float(word["start_ms"]),
                    float(word["end_ms"]),
                    index == len(words) - 1,
                )
            )
            found += 1
        counts["nouns"] += found
        counts["captions_without_nouns"] += int(found == 0)
    columns = ["caption_id", "image_id", "word_index", "word", "tag", "start_ms", "end_ms", "is_last"]
    table = pd.DataFrame(rows, columns=columns)
    return table.astype({"caption_id": "int64", "image_id": "int64", "word_index": "int64"}), counts


def add_frames(
    nouns: pd.DataFrame, num_frames: pd.Series, frame_args: Mapping[str, Any]
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Add ``frame_start`` and ``frame_end`` to the nouns; drop those outside the window.

    ``num_frames`` maps caption id to the caption's real frame count.
    """
    words = nouns.assign(num_frames=nouns["caption_id"].map(num_frames).to_numpy(dtype=np.int64))
    kept, counts = frames.assign_frames(words, **frame_args)
    return kept.loc[:, NOUN_COLUMNS].reset_index(drop=True), counts


def extract_nouns(
    captions: pd.DataFrame,
    tagger: Tagger,
    *,
    tags: Sequence[str],
    frame_args: Mapping[str, Any],
    hop_length: int,
    feature_sample_rate: int,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Return the nouns table of ``captions`` (manifest rows) and the counts of tagging and frames."""
    nouns, tag_counts = caption_nouns(captions, tagger, tags, progress=progress)
    num_frames = pd.Series(
        frames.count_frames(
            captions["num_samples"].to_numpy(dtype=np.int64),
            hop_length,
            captions["sample_rate"].to_numpy(dtype=np.int64),
            feature_sample_rate,
        ),
        index=captions["caption_id"].to_numpy(dtype=np.int64),
    )
    table, frame_counts = add_frames(nouns, num_frames, frame_args)
    return table, {"tagging": dict(tag_counts), "frames": frame_counts}


def run(params: Mapping[str, Any], paths: RunPaths) -> None:
    """Write ``paths.nouns``: the nouns of the test captions with their frame intervals."""
    manifest = pq.read_table(paths.manifest).to_pandas()
    test = manifest.loc[manifest["split"] == "test"].reset_index(drop=True)

    tagger, tagger_name = make_tagger(params["nouns"]["tagger"])
    frame_args = frames.frames_params(params)
    audio = params["features"]["audio"]
    table, counts = extract_nouns(
        test,
        tagger,
        tags=params["nouns"]["tags"],
        frame_args=frame_args,
        hop_length=int(audio["hop_length"]),
        feature_sample_rate=int(audio["sample_rate"]),
    )

    tagging = counts["tagging"]
    logger.info(
        "nouns (%s tagger): %d nouns in %d captions (%d without a noun); %d fillers; %d words not matched to a token",
        tagger_name,
        tagging.get("nouns", 0),
        tagging.get("captions", 0),
        tagging.get("captions_without_nouns", 0),
        tagging.get("fillers", 0),
        tagging.get("untagged_words", 0),
    )
    frames.log_frame_counts(counts["frames"], frame_args["convention"])

    metadata = {
        "tagger": tagger_name,
        "tagger_requested": params["nouns"]["tagger"],
        "tags": list(params["nouns"]["tags"]),
        "frames": frame_args,
        "counts": counts,
    }
    write_parquet_atomic(paths.nouns, table, metadata=metadata)
