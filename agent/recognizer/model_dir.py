"""Find the files of a SenseVoiceSmall model directory (either public ONNX export) and read its contract.

Everything a file carries (CMVN, LFR sizes, prompt ids, vocabulary, tag ids) is read from it; only
what no FunASR file carries (the prompt ids of its export) is written here, from FunASR's model.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from agent.errors import ModelError
from agent.recognizer.frontend import FrontendConfig
from agent.recognizer.vocab import Vocabulary, load_bpe_model, load_tokens_json, load_tokens_txt

SHERPA, FUNASR = "sherpa-onnx", "funasr"
# Model file per precision, in each export's naming.
MODEL_FILES = {
    SHERPA: {"int8": "model.int8.onnx", "fp32": "model.onnx", "fp16": "model.fp16.onnx"},
    FUNASR: {"int8": "model_quant.onnx", "fp32": "model.onnx", "fp16": "model_fp16.onnx"},
}
# int8 is the CPU model; on a GPU its integer MatMuls fall back to the CPU, so GPUs prefer floats.
AUTO_ORDER = {"cpu": ("int8", "fp32", "fp16"), "gpu": ("fp16", "fp32", "int8")}
BPE_MODEL = "chn_jpn_yue_eng_ko_spectok.bpe.model"
# FunASR's export takes these prompt ids (its model.py lid_dict / textnorm_dict); no file carries them.
FUNASR_LANGUAGE_IDS = {"auto": 0, "zh": 3, "en": 4, "yue": 7, "ja": 11, "ko": 12, "nospeech": 13}
FUNASR_ITN_IDS = (14, 15)
IO_NAMES = {
    SHERPA: {"features": "x", "lengths": "x_length", "language": "language", "text_norm": "text_norm",
             "logits": "logits"},
    FUNASR: {"features": "speech", "lengths": "speech_lengths", "language": "language",
             "text_norm": "textnorm", "logits": "ctc_logits"},
}
FETCH_HINT = "get one with: stt-agent model fetch sensevoice-small-int8 (see models/README.md)"


@dataclass
class ModelFiles:
    flavour: str
    directory: Path
    onnx: Path
    precision: str
    tokens: Path
    mvn: Optional[Path] = None
    config: Optional[Path] = None


@dataclass
class Contract:
    """How to feed the model and read its output, as its files describe it."""

    io: Dict[str, str]
    frontend: FrontendConfig
    language_ids: Dict[str, int]  # prompt value per language code, "auto" included
    itn_ids: tuple  # (with ITN, without ITN)
    blank_id: int


def locate(directory, precision: str = "auto", device: str = "cpu") -> ModelFiles:
    """Detect the export flavour and pick the model file; name exactly what is missing.

    `directory` may also be the model file itself (--model dir/model.int8.onnx, as sherpa-onnx's tools
    take it): the directory is its parent and that file is the one loaded.
    """
    directory = Path(directory)
    chosen_file = None
    if directory.is_file():
        if directory.suffix != ".onnx":
            raise ModelError(f"{directory} is a file, not a model directory or its .onnx model file; {FETCH_HINT}")
        chosen_file, directory = directory, directory.parent
    elif not directory.is_dir():
        what = "model file" if directory.suffix == ".onnx" else "model directory"
        raise ModelError(f"{what} {directory} does not exist; {FETCH_HINT}")
    has = lambda name: (directory / name).is_file()  # noqa: E731
    if has("tokens.txt"):
        flavour = SHERPA
    elif any(has(n) for n in ("am.mvn", "config.yaml", "tokens.json", BPE_MODEL, "model_quant.onnx")):
        flavour = FUNASR
    else:
        raise ModelError(
            f"{directory}: not a SenseVoice model directory: expected tokens.txt + model.int8.onnx or model.onnx "
            f"(sherpa-onnx export), or am.mvn + config.yaml + model_quant.onnx or model.onnx + tokens.json or "
            f"{BPE_MODEL} (FunASR export); {FETCH_HINT}")
    if chosen_file is not None:
        onnx, chosen = chosen_file, _precision_of(chosen_file, flavour, precision)
    else:
        onnx, chosen = _pick_model_file(directory, flavour, precision, device)
    if flavour == SHERPA:
        return ModelFiles(flavour, directory, onnx, chosen, directory / "tokens.txt")
    for name in ("am.mvn", "config.yaml"):
        if not has(name):
            raise ModelError(f"{directory}: missing {name} (the FunASR export needs it beside {onnx.name})")
    tokens = directory / "tokens.json" if has("tokens.json") else directory / BPE_MODEL
    if not tokens.is_file():
        raise ModelError(f"{directory}: missing tokens.json or {BPE_MODEL} (the FunASR export's vocabulary)")
    return ModelFiles(flavour, directory, onnx, chosen, tokens, directory / "am.mvn", directory / "config.yaml")


def _pick_model_file(directory: Path, flavour: str, precision: str, device: str):
    names = MODEL_FILES[flavour]
    if precision != "auto":
        path = directory / names[precision]
        if not path.is_file():
            raise ModelError(f"{directory}: missing {names[precision]} (precision {precision} of the "
                             f"{flavour} export was asked for)")
        return path, precision
    for candidate in AUTO_ORDER[device]:
        path = directory / names[candidate]
        if path.is_file():
            return path, candidate
    wanted = " or ".join(names[p] for p in AUTO_ORDER[device][:2])
    raise ModelError(f"{directory}: missing {wanted} (the {flavour} export's model file)")


def _precision_of(onnx: Path, flavour: str, precision: str) -> str:
    """The precision of a model file named directly: by its export's name for it, else by its name's words."""
    known = {name: p for p, name in MODEL_FILES[flavour].items()}
    found = known.get(onnx.name)
    if found is None:
        lower = onnx.name.lower()
        found = "int8" if ("int8" in lower or "quant" in lower) else "fp16" if "fp16" in lower else "fp32"
    if precision not in ("auto", found):
        raise ModelError(f"{onnx} is the {found} model, but precision {precision} was asked for: give the "
                         f"{precision} model file, its directory, or precision auto")
    return found


def load_vocabulary(files: ModelFiles) -> Vocabulary:
    if files.tokens.name == "tokens.txt":
        return load_tokens_txt(files.tokens)
    if files.tokens.suffix == ".json":
        return load_tokens_json(files.tokens)
    return load_bpe_model(files.tokens)


def read_contract(files: ModelFiles, input_names: Sequence[str], output_names: Sequence[str],
                  metadata: Dict[str, str]) -> Contract:
    io = IO_NAMES[files.flavour]
    expected_in = [io[k] for k in ("features", "lengths", "language", "text_norm")]
    if sorted(input_names) != sorted(expected_in) or io["logits"] not in output_names:
        raise ModelError(
            f"{files.onnx}: inputs {list(input_names)} / outputs {list(output_names)} do not match the {files.flavour} "
            f"SenseVoice export (expected inputs {', '.join(expected_in)} and output {io['logits']})")
    if files.flavour == SHERPA:
        return _sherpa_contract(files, io, metadata)
    return _funasr_contract(files, io)


def _meta(files: ModelFiles, metadata: Dict[str, str], key: str, default=None) -> str:
    if key in metadata:
        return metadata[key]
    if default is not None:
        return default
    raise ModelError(f"{files.onnx}: ONNX metadata has no '{key}' (is this sherpa-onnx's SenseVoice export?)")


def _floats(files: ModelFiles, text: str, what: str, size: Optional[int] = None) -> np.ndarray:
    try:
        values = np.array([float(v) for v in text.replace(",", " ").split()], dtype=np.float32)
    except ValueError:
        raise ModelError(f"{files.directory}: {what} holds a value that is not a number") from None
    if size is not None and values.size != size:
        raise ModelError(f"{files.directory}: {what} has {values.size} values, expected {size}")
    return values


def _int(files: ModelFiles, metadata, key, default=None) -> int:
    value = _meta(files, metadata, key, default)
    try:
        return int(value)
    except ValueError:
        raise ModelError(f"{files.onnx}: ONNX metadata '{key}' is {value!r}, expected an integer") from None


def _sherpa_contract(files: ModelFiles, io, metadata) -> Contract:
    m = _int(files, metadata, "lfr_window_size")
    n = _int(files, metadata, "lfr_window_shift")
    dim = m * 80
    frontend = FrontendConfig(
        neg_mean=_floats(files, _meta(files, metadata, "neg_mean"), "metadata neg_mean", dim),
        inv_stddev=_floats(files, _meta(files, metadata, "inv_stddev"), "metadata inv_stddev", dim),
        lfr_m=m, lfr_n=n, normalize_samples=bool(_int(files, metadata, "normalize_samples", "0")))
    languages = {"auto": _int(files, metadata, "lang_auto", "0")}
    for key in metadata:
        if key.startswith("lang_") and key != "lang_auto":
            languages[key[5:]] = _int(files, metadata, key)
    itn = (_int(files, metadata, "with_itn"), _int(files, metadata, "without_itn"))
    return Contract(io, frontend, languages, itn, _int(files, metadata, "blank_id", "0"))


def _funasr_contract(files: ModelFiles, io) -> Contract:
    import yaml  # only FunASR exports carry a config.yaml

    try:
        config = yaml.safe_load(files.config.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelError(f"{files.config}: cannot read: {exc}") from None
    conf = config.get("frontend_conf") if isinstance(config, dict) else None
    if not isinstance(conf, dict):
        raise ModelError(f"{files.config}: has no frontend_conf section (FunASR's config.yaml has one)")
    m, n, mels = int(conf.get("lfr_m", 7)), int(conf.get("lfr_n", 6)), int(conf.get("n_mels", 80))
    neg_mean, inv_stddev = read_am_mvn(files.mvn, m * mels)
    frontend = FrontendConfig(
        neg_mean=neg_mean, inv_stddev=inv_stddev, lfr_m=m, lfr_n=n, mel_bins=mels,
        frame_length_ms=float(conf.get("frame_length", 25)), frame_shift_ms=float(conf.get("frame_shift", 10)),
        window=str(conf.get("window", "hamming")))
    return Contract(io, frontend, dict(FUNASR_LANGUAGE_IDS), FUNASR_ITN_IDS, 0)


def read_am_mvn(path: Path, size: int):
    """Kaldi nnet text: <AddShift> then <Rescale>, each with a `<LearnRateCoef> 0 [ ... ]` line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot read: {exc}") from None
    vectors = []
    for component in ("AddShift", "Rescale"):
        match = re.search(rf"<{component}>[^\[]*\[([^\]]*)\]", text)
        if not match:
            raise ModelError(f"{path}: no <{component}> vector (expected Kaldi nnet text as FunASR writes am.mvn)")
        try:
            values = np.array(match.group(1).split(), dtype=np.float32)
        except ValueError:
            raise ModelError(f"{path}: <{component}> holds a value that is not a number") from None
        if values.size != size:
            raise ModelError(f"{path}: <{component}> has {values.size} values, expected {size}")
        vectors.append(values.astype(np.float32))
    return vectors[0], vectors[1]
