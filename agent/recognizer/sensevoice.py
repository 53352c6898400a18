"""SenseVoiceSmall on ONNX Runtime: audio in; text, tags, probabilities and token times out."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import List, Optional, Sequence, Union

import numpy as np

from agent.errors import ConfigError, ModelError
from agent.recognizer.cancel import CancelToken, DecodeCancelled
from agent.recognizer.decoding import PROMPT_FRAMES, Decoder, DecodeOptions, decode_batch, nothing_heard
from agent.recognizer.frontend import SAMPLE_RATE, Frontend
from agent.recognizer.hotwords import configured
from agent.recognizer.model_dir import load_vocabulary, locate, read_contract
from agent.recognizer.phrases import HotwordError, merge
from agent.recognizer.result import Recognition
from agent.recognizer.runtime import create_session, device_kind
from agent.recognizer.settings import RecognizerSettings

log = logging.getLogger(__name__)
_NUMPY_INT = {"tensor(int32)": np.int32, "tensor(int64)": np.int64}


def default_options(settings: RecognizerSettings) -> DecodeOptions:
    try:
        hotwords = merge(*(phrases for _, phrases in configured(settings)))
    except HotwordError as exc:
        raise ConfigError(str(exc)) from None
    return DecodeOptions(language=settings.language, allowed_languages=tuple(settings.allowed_languages),
                         use_itn=settings.use_itn, allow_emo_unknown=settings.allow_emo_unknown,
                         emotion_map={k.lower(): v for k, v in settings.emotion_map.items()},
                         hotwords=hotwords, hotwords_score=settings.hotwords_score,
                         hotwords_beam=settings.hotwords_beam)


class SenseVoiceRecognizer:
    sample_rate = SAMPLE_RATE

    def __init__(self, settings: RecognizerSettings):
        started = time.perf_counter()
        files = locate(settings.model_dir, settings.precision, device_kind(settings))
        vocab = load_vocabulary(files)  # before the session: a bad side file fails in milliseconds
        self._session, provider, package, optimized = create_session(files.onnx, settings)
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        metadata = self._session.get_modelmeta().custom_metadata_map
        self.contract = contract = read_contract(files, list(inputs), outputs, metadata)
        self._io = contract.io
        self._int_types = {k: _NUMPY_INT.get(inputs[contract.io[k]].type, np.int32)
                           for k in ("lengths", "language", "text_norm")}
        vocab_dim = self._session.get_outputs()[outputs.index(contract.io["logits"])].shape[-1]
        if isinstance(vocab_dim, int) and vocab_dim != len(vocab):
            raise ModelError(f"{files.tokens}: {len(vocab)} tokens, but {files.onnx.name} outputs {vocab_dim} "
                             "classes (tokens and model come from different exports?)")
        self.frontend = Frontend(contract.frontend)
        self.decoder = Decoder(vocab, contract.frontend.seconds_per_frame, contract.blank_id)
        self.defaults = default_options(settings)
        self._check_languages(self.defaults)
        self._check_hotwords(settings)
        self.info = {"model_dir": str(files.directory), "model_file": files.onnx.name, "flavour": files.flavour,
                     "precision": files.precision, "provider": provider, "runtime": package,
                     "random_init": metadata.get("random_init") == "1",
                     "optimized_copy": None if optimized is None else str(optimized)}
        self.info["load_ms"] = round((time.perf_counter() - started) * 1000, 1)
        if settings.warmup:
            warm = time.perf_counter()
            self.recognize(np.zeros(SAMPLE_RATE, np.float32))
            self.info["warmup_ms"] = round((time.perf_counter() - warm) * 1000, 1)
        log.info("model %s (%s, %s%s) loaded on %s with %s in %.0f ms", files.onnx, files.flavour, files.precision,
                 ", optimized copy" if optimized else "", provider, package, self.info["load_ms"])
        if self.info["random_init"]:
            log.warning("%s has RANDOM weights (built for benchmarks): its text is meaningless", files.onnx)

    def _check_languages(self, options: DecodeOptions):
        known = set(self.contract.language_ids) - {"auto"}
        for code in (options.language, *options.allowed_languages):
            if code != "auto" and code not in known:
                raise ModelError(f"language {code!r} is not one this model knows ({', '.join(sorted(known))})")

    def _check_hotwords(self, settings: RecognizerSettings) -> None:
        try:  # every configured phrase spelled in this vocabulary: a typo fails the start, not a decode
            for where, phrases in configured(settings):
                self.decoder.hotwords.check(phrases, where)
        except HotwordError as exc:
            raise ConfigError(str(exc)) from None

    def reload_hotwords(self, settings: RecognizerSettings) -> bool:
        """The configured phrases read again (the list, the file, score and beam); True if they changed.
        Utterances decoded with the defaults use them from now on; a stream that set its own phrases keeps
        the configured ones it merged until it sets them again or reconnects. ConfigError: nothing changes."""
        fresh = default_options(settings)
        self._check_hotwords(settings)
        keys = ("hotwords", "hotwords_score", "hotwords_beam")
        if all(getattr(fresh, k) == getattr(self.defaults, k) for k in keys):
            return False
        # one reference replaced: a decode already running keeps the options object it took
        self.defaults = dataclasses.replace(self.defaults, **{k: getattr(fresh, k) for k in keys})
        return True

    def options(self, **changes) -> DecodeOptions:
        """The default options with some changed (validated against the model's languages)."""
        if "hotwords" in changes:  # a stream's phrases add to the configured ones (the box's name stays)
            changes["hotwords"] = merge(self.defaults.hotwords, tuple(changes["hotwords"]))
        options = DecodeOptions(**{**self.defaults.__dict__, **changes})
        self._check_languages(options)
        return options

    def recognize(self, samples: np.ndarray, options: Optional[DecodeOptions] = None,
                  offset: float = 0.0, cancel: Optional[CancelToken] = None) -> Recognition:
        """One utterance: float samples at 16 kHz on the int16 scale."""
        return self.recognize_batch([samples], options, [offset], cancel)[0]

    def recognize_batch(self, segments: Sequence[np.ndarray],
                        options: Union[DecodeOptions, Sequence[Optional[DecodeOptions]], None] = None,
                        offsets: Optional[Sequence[float]] = None,
                        cancel: Optional[CancelToken] = None) -> List[Recognition]:
        """Several utterances in one session run (zero-padded, with true lengths).

        `options`: one for all, or one per segment (None: the defaults) — each item gets its own
        language and ITN prompt, so streams with different settings share a batch.
        """
        per_item = self._per_item(options, len(segments))
        durations = [len(s) / SAMPLE_RATE for s in segments]
        offsets = list(offsets or [0.0] * len(segments))
        heard = [i for i, s in enumerate(segments) if len(s)]
        if heard and len(heard) == len(segments):
            logits, lengths = self.logits(segments, per_item, cancel)
            return decode_batch(self.decoder, logits, lengths, per_item, durations, offsets)
        # No samples at all (a 0-sample WAV): the frontend's padding would give the model one frame of
        # zeros, whose tags answer only the prompts. No model run; nothing_heard says so.
        results = [nothing_heard(o, d) for o, d in zip(per_item, durations)]
        if heard:
            logits, lengths = self.logits([segments[i] for i in heard], [per_item[i] for i in heard], cancel)
            decoded = decode_batch(self.decoder, logits, lengths, [per_item[i] for i in heard],
                                   [durations[i] for i in heard], [offsets[i] for i in heard])
            for i, result in zip(heard, decoded):
                results[i] = result
        return results

    def _per_item(self, options, n: int) -> List[DecodeOptions]:
        if options is None or isinstance(options, DecodeOptions):
            return [options or self.defaults] * n
        if len(options) != n:
            raise ValueError(f"{len(options)} options for {n} segments")
        return [o or self.defaults for o in options]

    def logits(self, segments: Sequence[np.ndarray], options: Union[DecodeOptions, Sequence[DecodeOptions]],
               cancel: Optional[CancelToken] = None):
        """Raw model output (batch, frames, vocab) and each item's valid frame count (prompts included)."""
        features = [self.frontend.features(s) for s in segments]
        lengths = np.array([f.shape[0] for f in features])
        if len(features) == 1:
            batch = features[0][None]
        else:
            batch = np.zeros((len(features), lengths.max(), features[0].shape[1]), np.float32)
            for i, f in enumerate(features):
                batch[i, : f.shape[0]] = f
        per_item = self._per_item(options, len(features))
        language = [self.contract.language_ids[o.language] for o in per_item]
        text_norm = [self.contract.itn_ids[0 if o.use_itn else 1] for o in per_item]
        io, types = self._io, self._int_types
        feed = {
            io["features"]: batch,
            io["lengths"]: lengths.astype(types["lengths"]),
            io["language"]: np.asarray(language, types["language"]),
            io["text_norm"]: np.asarray(text_norm, types["text_norm"]),
        }
        if cancel is None:
            (logits,) = self._session.run([io["logits"]], feed)
            return logits, lengths + PROMPT_FRAMES
        import onnxruntime

        run_options = onnxruntime.RunOptions()
        cancel.on_cancel(lambda: setattr(run_options, "terminate", True))  # aborts session.run within ms
        try:
            (logits,) = self._session.run([io["logits"]], feed, run_options)
        except Exception:
            if cancel.cancelled:
                raise DecodeCancelled() from None
            raise
        if cancel.cancelled:
            raise DecodeCancelled()
        return logits, lengths + PROMPT_FRAMES
