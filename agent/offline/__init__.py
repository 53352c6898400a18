"""Whole files: cut into utterances by the live pipeline's VAD and segmenter, decoded in batches.

`transcribe` (transcribe.py) and `run --fast` on a file (agent/pipeline/offline.py) share it.
"""
