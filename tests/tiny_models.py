"""Tiny ONNX models with SenseVoice's exact I/O contract and logits known in advance.

The graph mirrors the real one where it matters to callers: prompt rows picked by the `language`
and `text_norm` inputs (Gather on a 16-row table), an emotion and an event frame, then one output
frame per input frame, so the expected text, tags, probabilities and token times are computable
by hand. `echo=True` instead copies the input features into the text frames, to check the
frontend's output reaches the model unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LANGS = ["zh", "en", "yue", "ja", "ko", "nospeech"]
EMOTIONS = ["HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED", "EMO_UNKNOWN"]
EVENTS = ["Speech", "BGM", "Applause", "Laughter", "Cry", "Sneeze", "Breath", "Cough", "Sing",
          "Speech_Noise", "GBG", "Event_UNK"]
WORDS = ["\u2581hello", "\u2581world", "你", "好", "\u2581ok", "<0xE4>", "<0xBD>", "<0xA0>"]
VOCAB = (["<unk>", "<s>", "</s>"] + [f"<|{t}|>" for t in LANGS + EMOTIONS + EVENTS]
         + ["<|withitn|>", "<|woitn|>"] + WORDS)
LANG_INPUT = {"auto": 0, "zh": 3, "en": 4, "yue": 7, "ja": 11, "ko": 12, "nospeech": 13}
WITH_ITN, WITHOUT_ITN = 14, 15
FLOOR = -10.0  # logit of every token a frame does not favour

# Logits of the tags at their prompt frames (auto language detection; other tags at 0).
AUTO_LANGUAGE = {"zh": 1.0, "en": 3.0, "yue": 0.5, "ja": 0.0, "ko": 0.0, "nospeech": -1.0}
FIXED_LANGUAGE = 5.0  # a fixed language prompt: that tag at 5, the other languages at 0
EMOTION = {"HAPPY": 2.0, "SAD": 0.0, "ANGRY": 0.0, "NEUTRAL": 1.0, "FEARFUL": -1.0, "DISGUSTED": -1.0,
           "SURPRISED": 0.5, "EMO_UNKNOWN": 3.0}
EVENT = {"Speech": 2.0, "Laughter": 1.0}
PEAK = 4.0
# Text frames repeat this pattern of (favoured token, its logit; every other token at 0); None is the blank.
PATTERN = [(None, 4.0), ("\u2581hello", 3.0), ("\u2581hello", 4.0), (None, 4.0), ("\u2581world", 2.0),
           (None, 4.0), ("你", 5.0), ("好", 1.5), ("好", 2.5), (None, 4.0), (None, 4.0), (None, 4.0)]
PATTERN_TEXT = "hello world你好"
# 10960 samples -> 67 fbank frames -> ceil(67 / 6) = 12 model frames: exactly one PATTERN.
ONE_PATTERN_SAMPLES = 10960


def text_prob(logit: float) -> float:
    """Posterior of a text frame's favoured token: the others sit at logit 0."""
    return float(np.exp(logit) / (np.exp(logit) + len(VOCAB) - 1))


def token_id(piece: str) -> int:
    return VOCAB.index(piece)


def _row(values: dict, floor: float = FLOOR) -> np.ndarray:
    row = np.full(len(VOCAB), floor, np.float32)
    for piece, value in values.items():
        row[token_id(piece)] = value
    return row


def _tables():
    language = np.full((16, len(VOCAB)), FLOOR, np.float32)
    language[0] = _row({f"<|{k}|>": v for k, v in AUTO_LANGUAGE.items()})
    for code, index in LANG_INPUT.items():
        if code != "auto":
            language[index] = _row({f"<|{k}|>": (FIXED_LANGUAGE if k == code else 0.0) for k in LANGS})
    itn = np.full((16, len(VOCAB)), FLOOR, np.float32)
    itn[WITH_ITN] = _row({"<|withitn|>": PEAK})
    itn[WITHOUT_ITN] = _row({"<|woitn|>": PEAK})
    emotion = _row({f"<|{k}|>": v for k, v in EMOTION.items()})
    event = _row({f"<|{k}|>": EVENT.get(k, 0.0) for k in EVENTS})
    pattern = np.stack([_row({"<unk>" if piece is None else piece: logit}, floor=0.0) for piece, logit in PATTERN])
    return language, itn, emotion, event, pattern


def build_graph(flavour: str, echo: bool = False) -> onnx.ModelProto:
    sherpa = flavour == "sherpa-onnx"
    x, xlen, tn, out = ("x", "x_length", "text_norm", "logits") if sherpa else (
        "speech", "speech_lengths", "textnorm", "ctc_logits")
    language, itn, emotion, event, pattern = _tables()
    V = len(VOCAB)
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (language, "lang_table"), (itn, "itn_table"), (emotion[None], "emo_row"), (event[None], "event_row"),
        (pattern, "pattern"), (np.array([len(PATTERN)], np.int64), "period"),
        (np.array(0, np.int64), "zero"), (np.array(1, np.int64), "one"), (np.array([1], np.int64), "axis1"),
        (np.array([0], np.int64), "start0"), (np.array([V], np.int64), "vocab"),
        (np.array([2], np.int64), "axis2"), (np.array(4, np.int32), "four"),
    ]]
    nodes = [
        helper.make_node("Shape", [x], ["xshape"]),
        helper.make_node("Gather", ["xshape", "zero"], ["n"]),
        helper.make_node("Gather", ["xshape", "one"], ["t"]),
        helper.make_node("Unsqueeze", ["n", "start0"], ["n1"]),
        helper.make_node("Concat", ["n1", "vocab"], ["nv"], axis=0),
        # Prompt frames: rows picked by the prompt inputs, as the real graph's 16-row embedding does.
        helper.make_node("Gather", ["lang_table", "language"], ["f0"], axis=0),
        helper.make_node("Expand", ["emo_row", "nv"], ["f1"]),
        helper.make_node("Expand", ["event_row", "nv"], ["f2"]),
        helper.make_node("Gather", ["itn_table", tn], ["f3"], axis=0),
    ]
    for i in range(4):
        nodes.append(helper.make_node("Unsqueeze", [f"f{i}", "axis1"], [f"p{i}"]))
    if echo:
        nodes.append(helper.make_node("Slice", [x, "start0", "vocab", "axis2"], ["text"]))
    else:
        nodes += [
            helper.make_node("Range", ["zero", "t", "one"], ["frames"]),
            helper.make_node("Mod", ["frames", "period"], ["phase"]),
            helper.make_node("Gather", ["pattern", "phase"], ["text1"], axis=0),
            helper.make_node("Unsqueeze", ["n", "start0"], ["n_"]),
            helper.make_node("Unsqueeze", ["t", "start0"], ["t_"]),
            helper.make_node("Concat", ["n_", "t_", "vocab"], ["ntv"], axis=0),
            helper.make_node("Expand", ["text1", "ntv"], ["text"]),
        ]
    nodes.append(helper.make_node("Concat", ["p0", "p1", "p2", "p3", "text"], [out], axis=1))
    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", "T4", V])]
    if not sherpa:
        nodes.append(helper.make_node("Add", [xlen, "four"], ["encoder_out_lens"]))
        outputs.append(helper.make_tensor_value_info("encoder_out_lens", TensorProto.INT32, ["N"]))
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", "T", 560]),
              helper.make_tensor_value_info(xlen, TensorProto.INT32, ["N"]),
              helper.make_tensor_value_info("language", TensorProto.INT32, ["N"]),
              helper.make_tensor_value_info(tn, TensorProto.INT32, ["N"])]
    graph = helper.make_graph(nodes, "tiny_sensevoice", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13 if sherpa else 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def cmvn(seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-12, -6, 560).astype(np.float32), rng.uniform(0.1, 0.3, 560).astype(np.float32))


def write_sherpa(directory: Path, *, echo=False, model_name="model.int8.onnx") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model = build_graph("sherpa-onnx", echo)
    neg_mean, inv_stddev = cmvn()
    meta = {"model_type": "sense_voice_ctc", "version": "1", "lfr_window_size": "7", "lfr_window_shift": "6",
            "normalize_samples": "0", "neg_mean": ",".join(map(str, neg_mean.tolist())),
            "inv_stddev": ",".join(map(str, inv_stddev.tolist())), "vocab_size": str(len(VOCAB)),
            "with_itn": str(WITH_ITN), "without_itn": str(WITHOUT_ITN)}
    meta.update({f"lang_{code}": str(v) for code, v in LANG_INPUT.items()})
    onnx.helper.set_model_props(model, meta)
    onnx.save(model, directory / model_name)
    (directory / "tokens.txt").write_text("".join(f"{p} {i}\n" for i, p in enumerate(VOCAB)), encoding="utf-8")
    return directory


def write_funasr(directory: Path, *, echo=False, model_name="model_quant.onnx") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(build_graph("funasr", echo), directory / model_name)
    neg_mean, inv_stddev = cmvn()
    vec = lambda a: " ".join(f"{v:.8f}" for v in a)  # noqa: E731
    (directory / "am.mvn").write_text(
        "<Nnet>\n<Splice> 560 560\n[ 0 ]\n<AddShift> 560 560\n"
        f"<LearnRateCoef> 0 [ {vec(neg_mean)} ]\n<Rescale> 560 560\n<LearnRateCoef> 0 [ {vec(inv_stddev)} ]\n"
        "</Nnet>\n", encoding="utf-8")
    (directory / "config.yaml").write_text(
        "frontend: WavFrontend\nfrontend_conf:\n  fs: 16000\n  window: hamming\n  n_mels: 80\n"
        "  frame_length: 25\n  frame_shift: 10\n  lfr_m: 7\n  lfr_n: 6\n", encoding="utf-8")
    (directory / "tokens.json").write_text(json.dumps(VOCAB, ensure_ascii=False), encoding="utf-8")
    return directory
