"""Speech for COCO captions: espeak-ng synthesis and the SPEECH-COCO and SpokenCOCO readers.

- :mod:`vgsalign.speech.tts`: espeak-ng through its C API, with word onsets.
- :mod:`vgsalign.speech.speechcoco`: SPEECH-COCO JSON, SQLite and WAV reading and writing.
- :mod:`vgsalign.speech.spokencoco`: SpokenCOCO JSON with optional word alignments.
- :mod:`vgsalign.speech.synthesize`: the ``synthesize_speech`` stage.

The modules are imported on use, so reading a corpus does not load espeak-ng.
"""
