"""Settings of the speech recognizer (agent.settings.Settings puts them in the config as `recognizer`).

Written like every part's settings: one dataclass per section, a doc string per key, unknown keys are
errors. Nothing here imports numpy or ONNX Runtime: `agent.settings` loads this on every command's start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

from agent.config_schema import section, setting
from agent.recognizer.phrases import MAX_PHRASES, HotwordError, parse_phrase, read_phrase_file

PROVIDERS = ("tensorrt", "cuda", "cpu")
PRECISIONS = ("auto", "int8", "fp32", "fp16")
# The released SenseVoiceSmall understands these languages only (research papers say 50+).
LANGUAGES = ("zh", "en", "yue", "ja", "ko")
MODEL_EMOTIONS = ("happy", "sad", "angry", "neutral", "fearful", "disgusted", "surprised", "emo_unknown")


@dataclass
class CpuSettings:
    threads: int = setting(
        2, "Intra-op threads of the CPU execution provider. Best at the number of physical cores given to the "
           "agent.", min=1, max=64)
    optimized_cache_dir: str = setting(
        "auto", "Where 'stt-agent model optimize' keeps an optimized copy of the model for the CPU provider (used "
                "only when providers is [cpu]): it loads in ~60% of the time, with the same output. auto = "
                "$CACHE_DIRECTORY/onnxruntime (set by systemd: /var/cache/stt-agent/onnxruntime), else "
                "~/.cache/stt-agent/onnxruntime; empty = never use one.")


@dataclass
class CudaSettings:
    device_id: int = setting(0, "CUDA device index.", min=0, max=63)


@dataclass
class TensorRTSettings:
    fp16: bool = setting(True, "Let TensorRT run layers in fp16 (Jetson's fast path).")
    engine_cache_dir: str = setting(
        "/var/cache/stt-agent/tensorrt",
        "Where built TensorRT engines are cached: the first start builds them for minutes, later ones load "
        "them in seconds.")
    workspace_mb: int = setting(2048, "TensorRT builder workspace in MiB.", min=64, max=65536)
    device_id: int = setting(0, "CUDA device index.", min=0, max=63)


@dataclass
class RecognizerSettings:
    model_dir: str = setting(
        "models/sensevoice-small-int8", "Model directory: either public ONNX export of SenseVoiceSmall (sherpa-onnx's "
                                        "or FunASR's), or one .onnx file in it to load that file (precision "
                                        "follows from its name). Get one with: stt-agent model fetch "
                                        "sensevoice-small-int8")
    precision: str = setting(
        "auto", "Which model file to load. auto: int8 on CPU (fast there), fp16/fp32 on GPU (int8 runs badly on "
                "CUDA).", choices=PRECISIONS)
    providers: List[str] = setting(
        ["cpu"], "Execution providers to try, in order. One that cannot load is logged once with the reason and "
                 "the next is used; the one really in use is logged and reported. A Jetson or CUDA box "
                 "(onnxruntime-gpu installed): [tensorrt, cuda, cpu].", choices=PROVIDERS)
    cpu: CpuSettings = section(CpuSettings, "CPU provider options.")
    cuda: CudaSettings = section(CudaSettings, "CUDA provider options.")
    tensorrt: TensorRTSettings = section(TensorRTSettings, "TensorRT provider options.")
    language: str = setting("auto", "A fixed language, or auto to detect it per utterance.",
                            choices=("auto",) + LANGUAGES)
    allowed_languages: List[str] = setting(
        [], "With language auto: detect only among these, e.g. [zh, en]; empty = all five. (nospeech stays "
            "possible, so non-speech is still recognised as such.)", choices=LANGUAGES)
    use_itn: bool = setting(True, "Inverse text normalisation: punctuation, casing and digits in the text.")
    allow_emo_unknown: bool = setting(
        False, "Report EMO_UNKNOWN; when false the most likely real emotion is reported instead.")
    emotion_map: Dict[str, str] = setting(
        {}, "Map the model's emotions (happy, sad, angry, neutral, fearful, disgusted, surprised, emo_unknown) "
            "onto the avatar's own labels; scores of labels mapped together are summed; unmapped labels keep "
            "their name. Example for a five-class avatar: {fearful: surprised, disgusted: angry}")
    warmup: bool = setting(True, "Run one decode at load so the first utterance is not slow.")
    hotwords: List[str] = setting(
        [], "Phrases to favour in the text, each 'phrase' or 'phrase:weight' (weight in (0, 10], default 1): the "
            "box's own name, its users' names, product words. They apply to every utterance; a stream's own "
            "phrases (Wyoming transcript_names and terms, OpenAI keywords and prompt, the WebSocket start's "
            "hotwords) are added to them. With any, the text comes from a prefix beam search biased towards "
            "them; with none, from greedy search as before. At most 1000, each at most 200 characters. Read again "
            "on SIGHUP (systemctl reload stt-agent), with hotwords_file, hotwords_score and hotwords_beam.")
    hotwords_file: str = setting(
        "", "A UTF-8 file of more phrases, one per line ('phrase' or 'phrase:weight'; lines starting with # are "
            "comments); empty = none.")
    hotwords_score: float = setting(
        1.5, "Bonus per matched token of a phrase, times its weight (log-probability, nats). Higher finds phrases "
             "said less clearly, and puts in more that were not said.", min=0.1, max=10.0)
    hotwords_beam: int = setting(4, "Hypotheses the biased search keeps: more is slower.", min=1, max=32)

    def check(self):
        """Cross-field checks; yields (key, message)."""
        if len(set(self.providers)) != len(self.providers):
            yield "providers", f"lists a provider twice: {self.providers}"
        if not self.providers:
            yield "providers", "must list at least one provider (tensorrt, cuda, cpu)"
        for label in self.emotion_map:
            if label.lower() not in MODEL_EMOTIONS:
                yield "emotion_map", (f"{label!r} is not a model emotion (expected one of: "
                                      f"{', '.join(MODEL_EMOTIONS)})")
        if self.language != "auto" and self.allowed_languages:
            yield "allowed_languages", (f"{self.allowed_languages} only applies with language: auto "
                                        f"(language is {self.language!r}); remove one of them")
        yield from _check_hotwords(self)


def _check_hotwords(rec: RecognizerSettings):
    """Syntax and limits of the phrases (their spelling needs the model's vocabulary: checked at load)."""
    if len(rec.hotwords) > MAX_PHRASES:
        yield "hotwords", f"{len(rec.hotwords)} phrases; at most {MAX_PHRASES} (more go in hotwords_file)"
    for i, item in enumerate(rec.hotwords):
        try:
            parse_phrase(item, "")
        except HotwordError as exc:
            yield f"hotwords[{i}]", str(exc)
    if rec.hotwords_file:
        try:
            read_phrase_file(rec.hotwords_file)
        except HotwordError as exc:
            yield "hotwords_file", str(exc)
