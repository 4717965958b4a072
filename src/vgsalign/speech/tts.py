"""Text-to-speech with espeak-ng, returning the waveform and each word's onset.

espeak-ng comes from the PyPI package ``espeakng-loader`` (libespeak-ng 1.52.0
and its data). Its C API is driven through ctypes in synchronous mode, where
the synthesis callback receives the audio and a list of events. A WORD event
gives a word's character position in the input and its start sample. A
PHONEME event gives the start sample of each phoneme.

The library keeps global state and is not thread-safe, so it is initialised
once per process and every call goes through one lock. Each text is spoken in
a forked child of a small server process, which makes the output independent
of earlier calls (see ``_Engine`` and :func:`serve`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import math
import os
import pickle
import re
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Constants of speak_lib.h in espeak-ng 1.52 (API revision 12), the version that
# espeakng-loader 0.2.4 ships.
AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
ESPEAK_INITIALIZE_PHONEME_EVENTS = 0x0001
ESPEAK_RATE = 1
EVENT_LIST_TERMINATED = 0
EVENT_WORD = 1
EVENT_PHONEME = 7
EE_OK = 0
EE_NOT_FOUND = 2
RATE_MINIMUM = 80
RATE_MAXIMUM = 450
# Separator between phoneme names in the output of espeak_TextToPhonemes (bits 8-23 of phonememode).
PHONEME_SEPARATOR = "|"

# espeak-ng's phoneme names for pauses start with an underscore ("_", "_:", "_!").
PAUSE_PREFIX = "_"
# Stress marks that espeak-ng writes in front of a vowel, which are not phonemes of their own.
STRESS_MARKS = "'%=,"


class _EventId(ctypes.Union):
    _fields_ = [
        ("number", ctypes.c_int),
        ("name", ctypes.c_char_p),
        ("string", ctypes.c_char * 8),
    ]


class _Event(ctypes.Structure):
    """``espeak_EVENT`` of speak_lib.h (espeak-ng 1.52)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character position in the input
        ("length", ctypes.c_int),  # word length in characters (WORD events)
        ("audio_position", ctypes.c_int),  # ms from the start of the output
        ("sample", ctypes.c_int),  # sample index from the start of the output
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _Voice(ctypes.Structure):
    """``espeak_VOICE`` of speak_lib.h, used to select a voice by language."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class SynthesisError(RuntimeError):
    """espeak-ng failed to load, rejected a voice or produced no usable word events."""


@dataclass(frozen=True)
class Token:
    """One whitespace-separated token of the input text.

    ``word`` is the token without leading and trailing punctuation, the form that
    the SPEECH-COCO metadata stores. It is empty for a token with no letter or
    digit (such as "&" or "-"), which espeak-ng speaks but which is no word of
    the caption.
    """

    text: str
    start: int  # character offset of the token in the input
    end: int
    word: str

    @property
    def is_word(self) -> bool:
        return bool(self.word)


@dataclass(frozen=True)
class RawEvent:
    """The fields of one espeak-ng event that the alignment uses."""

    kind: int  # EVENT_WORD or EVENT_PHONEME
    text_position: int  # 1-based character position
    sample: int  # at the native sample rate
    phoneme: str = ""


@dataclass(frozen=True)
class Phone:
    name: str
    sample: int


@dataclass(frozen=True)
class SpokenWord:
    """One word of the input with its time span in samples (half-open)."""

    word: str
    start_sample: int
    end_sample: int
    phones: tuple[Phone, ...]


@dataclass(frozen=True)
class Synthesis:
    """Output of :func:`synthesize`: audio, sample rate and the caption's words in order."""

    waveform: np.ndarray  # float32, mono, in [-1, 1]
    sample_rate: int
    words: tuple[SpokenWord, ...]
    # Starts of pauses and of spoken non-word tokens ("&"): word boundaries that are no word onset.
    boundaries: tuple[int, ...] = field(default=())

    @property
    def duration_s(self) -> float:
        return len(self.waveform) / self.sample_rate

    @property
    def word_onsets(self) -> list[tuple[str, int]]:
        return [(word.word, word.start_sample) for word in self.words]


# -- text ---------------------------------------------------------------------------

_EDGE_PUNCTUATION = re.compile(r"^[^\w]+|[^\w]+$")


def normalize_text(text: str) -> str:
    """Strip the text and collapse every run of whitespace into one space."""
    return " ".join(text.split())


def tokenize(text: str) -> list[Token]:
    """Split ``text`` at whitespace into tokens with character offsets."""
    tokens = []
    for match in re.finditer(r"\S+", text):
        word = _EDGE_PUNCTUATION.sub("", match.group())
        tokens.append(Token(match.group(), match.start(), match.end(), word))
    return tokens


def caption_words(text: str) -> list[str]:
    """Return the words that synthesising ``text`` yields, in order."""
    return [token.word for token in tokenize(normalize_text(text)) if token.is_word]


# -- the engine ---------------------------------------------------------------------


class _Engine:
    """The process-wide espeak-ng library, initialised once. Threads must hold ``lock`` to use it.

    libespeak-ng 1.52 keeps synthesis state between calls in static variables
    that neither espeak_Terminate nor espeak_Initialize resets, such as the pitch
    flutter phase and the wave generator's gain and cycle counters. The same
    text then comes out a few samples longer or shorter depending on what was
    spoken before. :func:`serve` therefore speaks every text in a forked child
    of a small server process whose engine is initialised but has never spoken.
    """

    lock = threading.Lock()
    _instance: _Engine | None = None

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as error:
            raise SynthesisError(
                "espeak-ng is not installed. Install the optional extra: pip install 'vgsalign[tts]' "
                "(espeakng-loader, GPL-3)."
            ) from error
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        _declare_functions(self.lib)
        data_path = espeakng_loader.get_data_path().encode()
        self.sample_rate = self.lib.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, ESPEAK_INITIALIZE_PHONEME_EVENTS
        )
        if self.sample_rate <= 0:
            raise SynthesisError(f"espeak_Initialize failed with data folder {data_path.decode()}")
        self._chunks: list[np.ndarray] = []
        self._events: list[RawEvent] = []
        # The callback object must stay referenced for as long as the library may call it.
        self._callback = _SynthCallback(self._on_synth)
        self.lib.espeak_SetSynthCallback(self._callback)
        logger.info("espeak-ng initialised: %s Hz, data %s", self.sample_rate, data_path.decode())

    @classmethod
    def get(cls) -> _Engine:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _on_synth(self, wav: Any, num_samples: int, events: Any) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        index = 0
        while events[index].type != EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type == EVENT_WORD:
                self._events.append(RawEvent(EVENT_WORD, event.text_position, event.sample))
            elif event.type == EVENT_PHONEME:
                name = event.id.string.decode("utf-8", errors="replace")
                self._events.append(RawEvent(EVENT_PHONEME, event.text_position, event.sample, name))
            index += 1
        return 0

    def set_voice(self, voice: str) -> None:
        status = self.lib.espeak_SetVoiceByName(voice.encode())
        if status == EE_NOT_FOUND:
            # Names such as "en-gb" are languages, not voice file names, so select the voice by language.
            properties = _Voice(languages=voice.encode())
            status = self.lib.espeak_SetVoiceByProperties(ctypes.byref(properties))
        if status != EE_OK:
            raise SynthesisError(
                f"espeak-ng has no voice {voice!r} (error {status}). Use an espeak-ng voice name or "
                "language code, such as en-us or en-gb, in synthesis.voices."
            )

    def set_rate(self, words_per_minute: int) -> None:
        status = self.lib.espeak_SetParameter(ESPEAK_RATE, words_per_minute, 0)
        if status != EE_OK:
            raise SynthesisError(f"espeak_SetParameter(rate={words_per_minute}) failed with error {status}")

    def speak(self, text: str) -> tuple[np.ndarray, list[RawEvent]]:
        self._chunks, self._events = [], []
        encoded = text.encode("utf-8") + b"\0"
        buffer = ctypes.create_string_buffer(encoded, len(encoded))
        status = self.lib.espeak_Synth(buffer, len(encoded), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
        if status != EE_OK:
            raise SynthesisError(f"espeak_Synth failed with error {status} for text {text!r}")
        chunks, events = self._chunks, self._events
        self._chunks, self._events = [], []
        audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        return audio, events

    def phoneme_count(self, text: str) -> int:
        """Count the phonemes of ``text`` in espeak-ng's dictionary transcription."""
        pointer = ctypes.c_char_p(text.encode("utf-8"))
        mode = ord(PHONEME_SEPARATOR) << 8
        count = 0
        # espeak_TextToPhonemes returns one clause per call and advances the pointer.
        while pointer.value:
            result = self.lib.espeak_TextToPhonemes(ctypes.byref(pointer), ESPEAK_CHARS_UTF8, mode)
            if result is None:
                break
            names = result.decode("utf-8", errors="replace").replace(" ", PHONEME_SEPARATOR)
            count += sum(1 for name in names.split(PHONEME_SEPARATOR) if name.strip(STRESS_MARKS))
        return count

    def run(self, text: str, voice: str, rate: int) -> tuple[np.ndarray, list[RawEvent], dict[str, int], int]:
        """Speak ``text``; return int16 audio, events, phoneme counts of tokens without a WORD event, rate."""
        self.set_voice(voice)
        self.set_rate(rate)
        audio, events = self.speak(text)
        tokens = tokenize(text)
        spoken = {_token_at(tokens, event.text_position - 1) for event in events if event.kind == EVENT_WORD}
        counts = {
            token.text: self.phoneme_count(token.text) for index, token in enumerate(tokens) if index not in spoken
        }
        return audio, events, counts, self.sample_rate


def _declare_functions(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_Voice)]
    lib.espeak_SetVoiceByProperties.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
        ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]  # fmt: skip
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p


def _run_forked(engine: _Engine, text: str, voice: str, rate: int) -> tuple[bool, Any]:
    """Run :meth:`_Engine.run` in a forked child; return (True, result) or (False, SynthesisError).

    The calling process must never speak itself, so that every child starts
    from the same freshly initialised engine.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child_main(engine, read_fd, write_fd, text, voice, rate)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        payload = pipe.read()
    _, wait_status = os.waitpid(pid, 0)
    if not payload:
        message = f"the espeak-ng child process for {text!r} ended without a result (wait status {wait_status})"
        return False, SynthesisError(message)
    return pickle.loads(payload)


def _child_main(engine: _Engine, read_fd: int, write_fd: int, text: str, voice: str, rate: int) -> None:
    """Body of the forked child: speak, write the pickled result, and exit without cleanup."""
    exit_code = 0
    try:
        os.close(read_fd)
        try:
            payload = pickle.dumps((True, engine.run(text, voice, rate)))
        except Exception as error:  # sent to the parent, which raises it
            failure = error if isinstance(error, SynthesisError) else SynthesisError(f"{type(error).__name__}: {error}")
            payload = pickle.dumps((False, failure))
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(payload)
    except BaseException:
        exit_code = 1
    finally:
        # os._exit skips the parent's atexit handlers and buffered output, which the child must not run.
        os._exit(exit_code)


def _send(stream: Any, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream: Any) -> Any:
    """Read one length-prefixed pickle; return None at the end of the stream."""
    header = stream.read(8)
    if len(header) < 8:
        return None
    (length,) = struct.unpack("<Q", header)
    data = stream.read(length)
    if len(data) < length:
        return None
    return pickle.loads(data)


def serve() -> None:
    """Run the espeak-ng server: read requests from stdin and write replies to stdout until stdin closes.

    Each request is a pickled (text, voice, rate). The server initialises
    espeak-ng once and speaks every request in a forked child, so the output
    never depends on earlier requests. Forking this small process is cheaper
    than forking a client that has loaded pandas or torch (about 5 ms against
    30 ms, measured on a busy 2-core machine).
    """
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything else written to stdout would corrupt the replies
    requests = sys.stdin.buffer
    try:
        engine: _Engine | None = _Engine.get()
        failure = None
    except SynthesisError as error:
        engine, failure = None, error
    while (request := _receive(requests)) is not None:
        if engine is None:
            _send(replies, (False, failure))
        else:
            _send(replies, _run_forked(engine, *request))


class _Server:
    """Client side of one espeak-ng server process.

    Idle servers wait in a pool. A call borrows one, or starts a new one when
    all are busy, so threads of one process synthesise in parallel and the
    number of servers never exceeds the number of concurrent calls.
    """

    _idle: list[_Server] = []
    _lock = threading.Lock()

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[2])
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, environment.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from vgsalign.speech.tts import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=environment,
        )
        self.pid = os.getpid()

    def usable(self) -> bool:
        # A forked client must not use its parent's servers.
        return self.pid == os.getpid() and self.process.poll() is None

    @classmethod
    @contextlib.contextmanager
    def borrow(cls) -> Iterator[_Server]:
        with cls._lock:
            cls._idle = [server for server in cls._idle if server.usable()]
            server = cls._idle.pop() if cls._idle else None
        if server is None:
            server = cls()
        try:
            yield server
        finally:
            if server.usable():
                with cls._lock:
                    cls._idle.append(server)

    @classmethod
    def close_all(cls) -> None:
        with cls._lock:
            servers = [server for server in cls._idle if server.usable()]
            cls._idle = []
        for server in servers:
            server.close()

    def request(self, text: str, voice: str, rate: int) -> tuple[bool, Any]:
        try:
            _send(self.process.stdin, (text, voice, rate))
            reply = _receive(self.process.stdout)
        except OSError as error:
            reply = None
            logger.warning("lost the espeak-ng server process: %s", error)
        if reply is None:
            code = self.process.poll()
            self.close()
            return False, SynthesisError(f"the espeak-ng server process stopped (exit code {code}) on {text!r}")
        return reply

    def close(self) -> None:
        """Close the server's input, which ends it, and wait up to 5 s before killing it."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


atexit.register(_Server.close_all)


def _run_isolated(text: str, voice: str, rate: int) -> tuple[np.ndarray, list[RawEvent], dict[str, int], int]:
    """Speak ``text`` so that no earlier call changes the output (see :class:`_Engine`)."""
    if not hasattr(os, "fork"):
        # NOTE: without fork (Windows), the output depends slightly on earlier calls in the process.
        with _Engine.lock:
            return _Engine.get().run(text, voice, rate)
    with _Server.borrow() as server:
        succeeded, value = server.request(text, voice, rate)
    if not succeeded:
        raise value
    return value


def native_sample_rate() -> int:
    """Return espeak-ng's output sample rate (22050 Hz for its voices)."""
    with _Engine.lock:
        return _Engine.get().sample_rate


# -- alignment of events to words ---------------------------------------------------


def _token_at(tokens: list[Token], position: int) -> int | None:
    """Return the index of the token that contains character ``position``, or of the next token."""
    for index, token in enumerate(tokens):
        if position < token.end:
            return index
    return None


def _split_group(
    members: list[int],
    counts: list[int],
    phones: list[Phone],
    start: int,
    stop: int,
    tokens: list[Token],
) -> list[tuple[int, list[Phone]]]:
    """Give each member token of a group its start sample and phones.

    A group is what espeak-ng speaks under one WORD event: usually one token, but
    its dictionary joins some word pairs ("on the", "of a") into one entry with a
    single event. The later members get their dictionary phoneme count from the
    end of the group's phones. Without enough phones, starts are interpolated by
    character offset between ``start`` and ``stop``.
    """
    if len(members) == 1:
        return [(start, phones)]
    if len(phones) >= len(members):
        result: list[tuple[int, list[Phone]]] = []
        end = len(phones)
        for position in range(len(members) - 1, 0, -1):
            # Leave at least one phone for every earlier member.
            take = min(max(counts[position], 1), end - position)
            begin = end - take
            result.append((phones[begin].sample, phones[begin:end]))
            end = begin
        result.append((start, phones[:end]))
        return result[::-1]
    # NOTE: interpolation by characters is a rough estimate, used only when
    # espeak-ng reports fewer phonemes than the group has words.
    first, last = tokens[members[0]].start, tokens[members[-1]].end
    span = max(last - first, 1)
    interpolated: list[tuple[int, list[Phone]]] = [(start, phones)]
    for member in members[1:]:
        interpolated.append((start + round((stop - start) * (tokens[member].start - first) / span), []))
    return interpolated


def align_events(
    text: str,
    events: list[RawEvent],
    speech_end: int,
    phoneme_counts: dict[str, int] | None = None,
) -> tuple[list[SpokenWord], list[int]]:
    """Map espeak-ng's WORD and PHONEME events to the words of ``text``.

    Returns one SpokenWord per word token of ``text`` (see :func:`tokenize`) and the
    extra boundaries (pause starts and onsets of spoken non-word tokens), all in
    samples of the native rate. A word ends at the first boundary after its last
    phone: the next word's onset, a pause, or ``speech_end`` for the last word.
    ``phoneme_counts`` maps a token's text to its dictionary phoneme count and is
    used to split words that espeak-ng spoke under one event.
    """
    tokens = tokenize(text)
    phoneme_counts = phoneme_counts or {}
    groups, pauses = _group_events(tokens, events, text)

    starts: dict[int, tuple[int, list[Phone]]] = {}
    for position, (index, onset, phones) in enumerate(groups):
        next_index = groups[position + 1][0] if position + 1 < len(groups) else len(tokens)
        stop = groups[position + 1][1] if position + 1 < len(groups) else speech_end
        members = list(range(index, next_index))
        counts = [phoneme_counts.get(tokens[member].text, 1) for member in members]
        for member, assigned in zip(members, _split_group(members, counts, phones, onset, stop, tokens)):
            starts[member] = assigned

    word_members = [index for index in range(len(tokens)) if tokens[index].is_word]
    boundaries = sorted(set(pauses) | {starts[i][0] for i in range(len(tokens)) if not tokens[i].is_word})
    words = []
    for position, index in enumerate(word_members):
        start, phones = starts[index]
        next_start = starts[word_members[position + 1]][0] if position + 1 < len(word_members) else speech_end
        next_start = max(next_start, start)
        # Phone times are clamped into the word's span, because espeak-ng sometimes
        # reports a word's final consonant at the next word's onset.
        clamped = tuple(Phone(phone.name, min(max(phone.sample, start), next_start)) for phone in phones)
        if clamped:
            clamped = (Phone(clamped[0].name, start), *clamped[1:])
        last_phone = clamped[-1].sample if clamped else start
        candidates = [b for b in boundaries if last_phone < b < next_start]
        end = min(candidates) if candidates else next_start
        if end <= start:
            end = next_start
        words.append(SpokenWord(tokens[index].word, start, end, clamped))
    return words, boundaries


def _group_events(
    tokens: list[Token], events: list[RawEvent], text: str
) -> tuple[list[tuple[int, int, list[Phone]]], list[int]]:
    """Collect (token index, onset sample, phones) per WORD event, in spoken order, and the pause starts."""
    groups: list[tuple[int, int, list[Phone]]] = []
    pauses: list[int] = []
    for event in events:
        if event.kind == EVENT_WORD:
            index = _token_at(tokens, event.text_position - 1)
            if index is None or (groups and index <= groups[-1][0]):
                continue  # a second event inside the same token ("t-shirt") or past the end
            groups.append((index, event.sample, []))
        elif event.kind == EVENT_PHONEME and groups:
            if event.phoneme.startswith(PAUSE_PREFIX):
                pauses.append(event.sample)
            elif event.phoneme.strip(STRESS_MARKS):
                groups[-1][2].append(Phone(event.phoneme.strip(STRESS_MARKS), event.sample))
    if not groups:
        raise SynthesisError(f"espeak-ng reported no word events for {text!r}")
    if groups[0][0] > 0:
        # Tokens before the first event are spoken as part of it.
        index, onset, phones = groups[0]
        groups[0] = (0, onset, phones)
    return groups, pauses


# -- audio --------------------------------------------------------------------------


def resample(waveform: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Resample a mono waveform with a polyphase FIR filter (scipy's resample_poly)."""
    if source_rate == target_rate:
        return waveform.astype(np.float32, copy=False)
    from scipy.signal import resample_poly  # imported here to keep the espeak-ng server process small

    divisor = np.gcd(source_rate, target_rate)
    resampled = resample_poly(waveform.astype(np.float64), target_rate // divisor, source_rate // divisor)
    return resampled.astype(np.float32)


def find_speech_end(waveform: np.ndarray, sample_rate: int, floor_db: float = -40.0, frame_ms: float = 10.0) -> int:
    """Return the sample after the last frame whose RMS is within ``floor_db`` of the loudest frame."""
    frame = max(int(sample_rate * frame_ms / 1000), 1)
    count = len(waveform) // frame
    if count == 0:
        return len(waveform)
    frames = waveform[: count * frame].astype(np.float64).reshape(count, frame)  # (F, samples per frame)
    rms = np.sqrt(np.mean(frames**2, axis=1))  # (F,)
    if rms.max() == 0:
        return 0
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (floor_db / 20))
    end = (loud[-1] + 1) * frame
    # The incomplete frame at the end belongs to the speech when the last full frame does.
    return len(waveform) if loud[-1] == count - 1 else end


def rate_for(words_per_minute: int, speed: float) -> int:
    """Return espeak-ng's rate for a speed factor (rounded half up), or raise ValueError outside 80-450 wpm."""
    rate = math.floor(words_per_minute * speed + 0.5)
    if not RATE_MINIMUM <= rate <= RATE_MAXIMUM:
        raise ValueError(
            f"speaking rate {words_per_minute} wpm x speed {speed} = {rate} wpm is outside espeak-ng's "
            f"range {RATE_MINIMUM}-{RATE_MAXIMUM}. Change synthesis.words_per_minute or synthesis.speeds."
        )
    return rate


def synthesize(
    text: str,
    voice: str = "en-us",
    words_per_minute: int = 175,
    speed: float = 1.0,
    sample_rate: int | None = None,
) -> Synthesis:
    """Synthesise ``text`` and return its audio with one SpokenWord per word.

    ``text`` is normalised with :func:`normalize_text` first. The audio is
    resampled from espeak-ng's native rate to ``sample_rate`` when given, and the
    word samples are scaled to the new rate. The same input gives the same output.
    Raises SynthesisError when espeak-ng fails or ``text`` has no word.
    """
    text = normalize_text(text)
    tokens = tokenize(text)
    if not any(token.is_word for token in tokens):
        raise SynthesisError(f"text {text!r} has no word to synthesise")
    rate = rate_for(words_per_minute, speed)

    audio, events, counts, native_rate = _run_isolated(text, voice, rate)

    if len(audio) == 0:
        raise SynthesisError(f"espeak-ng produced no audio for {text!r} (voice {voice})")
    waveform = audio.astype(np.float32) / 32768.0
    speech_end = _speech_end(waveform, native_rate, events)
    words, boundaries = align_events(text, events, speech_end, counts)

    if sample_rate is None or sample_rate == native_rate:
        return Synthesis(waveform, native_rate, tuple(words), tuple(boundaries))
    scale = sample_rate / native_rate
    resampled = resample(waveform, native_rate, sample_rate)

    def convert(sample: int) -> int:
        return min(round(sample * scale), len(resampled))

    scaled_words = tuple(
        SpokenWord(
            word.word,
            convert(word.start_sample),
            convert(word.end_sample),
            tuple(Phone(phone.name, convert(phone.sample)) for phone in word.phones),
        )
        for word in words
    )
    return Synthesis(resampled, sample_rate, scaled_words, tuple(convert(b) for b in boundaries))


def _speech_end(waveform: np.ndarray, sample_rate: int, events: list[RawEvent]) -> int:
    """Return the end of the last word: the first pause after the last phone, or the end of the audible signal."""
    phones = [e.sample for e in events if e.kind == EVENT_PHONEME and not e.phoneme.startswith(PAUSE_PREFIX)]
    last_phone = max(phones) if phones else max((e.sample for e in events), default=0)
    pauses = [e.sample for e in events if e.kind == EVENT_PHONEME and e.phoneme.startswith(PAUSE_PREFIX)]
    candidates = [find_speech_end(waveform, sample_rate)] + [p for p in pauses if p > last_phone]
    end = min(candidates)
    # The end comes at least one 10 ms frame after the start of the last phone.
    return min(max(end, last_phone + sample_rate // 100), len(waveform))


# -- SPEECH-COCO timecode -----------------------------------------------------------


def build_timecode(synthesis: Synthesis) -> list[list[Any]]:
    """Build a SPEECH-COCO ``timecode`` list of ``[ms, kind, value]`` for the synthesis.

    Each word gets a SYL and a SEPR boundary and its WORD entry at its onset,
    then one PHO per phoneme (at least one per word). A pause after a word's last
    phone adds a SIL entry, and the end of the last word adds a final SYL and
    SEPR. The reader's rule then returns each word's end: a word ends at the
    first SYL/SEPR/SIL boundary after its last phone, the last word at the last SYL.

    NOTE: onsets come from espeak-ng's own word events, so they match its audio.
    Ends inside connected speech are the next onset or pause start, and SYL
    entries mark word boundaries only, not the syllables inside words.
    """
    rate = synthesis.sample_rate

    def ms(sample: int) -> float:
        return round(sample * 1000.0 / rate, 4)

    timecode: list[list[Any]] = []
    words = synthesis.words
    for position, word in enumerate(words):
        start = ms(word.start_sample)
        timecode += [[start, "SYL", ""], [start, "SEPR", " "], [start, "WORD", word.word]]
        phones = word.phones or (Phone(word.word, word.start_sample),)
        timecode += [[ms(phone.sample), "PHO", phone.name] for phone in phones]
        end = ms(max(word.end_sample, phones[-1].sample))
        if position == len(words) - 1:
            timecode += [[end, "SYL", ""], [end, "SEPR", " "]]
        elif word.end_sample < words[position + 1].start_sample:
            timecode.append([end, "SIL", ""])
    return timecode
