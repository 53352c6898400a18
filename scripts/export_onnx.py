#!/usr/bin/env python3
"""Export SenseVoiceSmall to ONNX in the sherpa-onnx flavour that stt-agent loads.

Writes into OUTDIR:
  model.onnx        fp32
  model.int8.onnx   dynamic int8 (MatMul weights, QUInt8), for CPU
  model.fp16.onnx   fp16 weights and compute, float32 inputs/outputs, for GPU
  tokens.txt        "piece id" per line

Graph contract (same as k2-fsa/sherpa-onnx scripts/sense-voice/export-onnx.py):
  inputs  x f32 (N,T,560), x_length i32 (N), language i32 (N), text_norm i32 (N)
  output  logits f32 (N,T+4,vocab), raw CTC logits; frames 0..3 answer the prompts
  metadata: model_type=sense_voice_ctc, lfr/cmvn values, prompt ids, vocab_size, blank_id

Usage:
  python scripts/export_onnx.py --checkpoint DIR --out OUTDIR
      DIR is a published SenseVoiceSmall checkpoint: model.pt, config.yaml, am.mvn,
      chn_jpn_yue_eng_ko_spectok.bpe.model
  python scripts/export_onnx.py --random-init --out OUTDIR
      Same full-size architecture with random weights, for benchmarks only.

Tooling only: needs torch, onnx, onnxruntime, sentencepiece, pyyaml. The `agent`
package never imports torch.

The architecture below is written from the description in FunASR
(funasr/models/sense_voice/model.py: SenseVoiceSmall, SenseVoiceEncoderSmall, SANM
layers); module and parameter names follow it so that the published model.pt state
dict loads with strict=True.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:  # pragma: no cover - tooling dependency
    sys.exit("error: scripts/export_onnx.py needs torch (pip install 'stt-agent[export]')")

import onnx

# ---------------------------------------------------------------------------
# Constants of the published model
# ---------------------------------------------------------------------------

BPE_MODEL_NAME = "chn_jpn_yue_eng_ko_spectok.bpe.model"
CHECKPOINT_FILES = ("model.pt", "config.yaml", "am.mvn", BPE_MODEL_NAME)

# Full-size SenseVoiceSmall encoder (config.yaml encoder_conf of the release).
DEFAULT_ENCODER_CONF = {
    "output_size": 512,
    "attention_heads": 4,
    "linear_units": 2048,
    "num_blocks": 50,  # 1 block of encoders0 + 49 of encoders
    "tp_blocks": 20,
    "kernel_size": 11,
    "sanm_shfit": 0,  # sic: FunASR's spelling
    "normalize_before": True,
}
DEFAULT_LFR_M = 7
DEFAULT_LFR_N = 6
N_MELS = 80
VOCAB_SIZE = 25055

# Indices into the 16-row prompt embedding (FunASR lid_dict / textnorm_dict).
PROMPT_IDS = {
    "lang_auto": 0,
    "lang_zh": 3,
    "lang_en": 4,
    "lang_yue": 7,
    "lang_ja": 11,
    "lang_ko": 12,
    "lang_nospeech": 13,
    "with_itn": 14,
    "without_itn": 15,
}
EMO_QUERY_ID = 1  # fixed prompt rows put after the language prompt
EVENT_QUERY_ID = 2
N_PROMPT_ROWS = 16

# sherpa-onnx uses version 2 for exports whose int8 file uses QUInt8.
SHERPA_META_VERSION = "2"

# Output token ids of the tags in the released vocabulary. The first group is in
# FunASR's model.py (lid_int_dict, emo_dict, textnorm_int_dict); the second was read
# from public code that lists the SentencePiece model's tag ids (an optimum-intel
# SenseVoice test table, cross-checked against a SentencePiece-parsing test that also
# gives 0=<unk>, 24992, 25009, 25017 and 25019=<|Event_UNK|>).
REAL_TAG_IDS = {
    "<|zh|>": 24884,
    "<|en|>": 24885,
    "<|yue|>": 24888,
    "<|ja|>": 24892,
    "<|ko|>": 24896,
    "<|nospeech|>": 24992,
    "<|Speech|>": 24993,
    "<|BGM|>": 24995,
    "<|Laughter|>": 24997,
    "<|Applause|>": 24999,
    "<|HAPPY|>": 25001,
    "<|SAD|>": 25002,
    "<|ANGRY|>": 25003,
    "<|NEUTRAL|>": 25004,
    "<|FEARFUL|>": 25005,
    "<|DISGUSTED|>": 25006,
    "<|SURPRISED|>": 25007,
    "<|OTHER|>": 25008,
    "<|EMO_UNKNOWN|>": 25009,
    "<|Cry|>": 25010,
    "<|Sneeze|>": 25011,
    "<|Breath|>": 25012,
    "<|Cough|>": 25013,
    "<|Sing|>": 25014,
    "<|Speech_Noise|>": 25015,
    "<|withitn|>": 25016,
    "<|woitn|>": 25017,
    "<|GBG|>": 25018,
    "<|Event_UNK|>": 25019,
}
FIRST_TAG_ID = 24884  # ids from here on are tags in the real vocabulary

WARNING_TEXT = (
    "WARNING: this is NOT a real SenseVoiceSmall model. It has the full-size\n"
    "architecture with RANDOM weights and a synthetic vocabulary, made by\n"
    "scripts/export_onnx.py --random-init for speed benchmarks only.\n"
    "Everything it transcribes is meaningless.\n"
)


class UsageError(Exception):
    """A problem with the user's input: reported on one line, exit code 2."""


# ---------------------------------------------------------------------------
# Model (names mirror FunASR so state dicts load strictly)
# ---------------------------------------------------------------------------


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 even inside an fp16 model (as FunASR does):
    fp16 variance over 512 values loses too much precision."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        )
        return out.to(x.dtype)


def sinusoidal_encoding(length: int, depth: int, device: torch.device) -> torch.Tensor:
    """(1, length, depth) position encoding, positions counted from 1.

    Computed in float32 at trace time from shapes only; the caller casts. Keeping it
    out of the module's buffers keeps the state dict identical to FunASR's and stops
    .half() from rounding the frequencies."""
    positions = torch.arange(1, length + 1, device=device, dtype=torch.float32)
    increment = math.log(10000.0) / (depth / 2 - 1)
    inv_timescales = torch.exp(
        torch.arange(depth // 2, device=device, dtype=torch.float32) * -increment
    )
    scaled = positions[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)[None]


class PositionwiseFeedForward(nn.Module):
    def __init__(self, size: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(size, hidden)
        self.w_2 = nn.Linear(hidden, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(torch.relu(self.w_1(x)))


class MultiHeadedAttentionSANM(nn.Module):
    """Self-attention plus an FSMN memory block (a depthwise conv over the values)."""

    def __init__(self, n_head: int, in_feat: int, n_feat: int, kernel_size: int, shift: int):
        super().__init__()
        self.h = n_head
        self.d_k = n_feat // n_head
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_q_k_v = nn.Linear(in_feat, n_feat * 3)
        self.fsmn_block = nn.Conv1d(
            n_feat, n_feat, kernel_size, stride=1, padding=0, groups=n_feat, bias=False
        )
        left = (kernel_size - 1) // 2 + max(shift, 0)
        self.pad = (left, kernel_size - 1 - left)

    def fsmn(self, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Zeroing padded frames before the conv makes a padded batch row see the
        # same zero context past its end as an unbatched input does.
        mask_t = mask.transpose(1, 2)  # (B, T, 1)
        v = v * mask_t
        memory = self.fsmn_block(F.pad(v.transpose(1, 2), self.pad)).transpose(1, 2)
        return (memory + v) * mask_t

    def split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.h, self.d_k).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = torch.split(self.linear_q_k_v(x), self.h * self.d_k, dim=-1)
        memory = self.fsmn(v, mask)
        scores = torch.matmul(self.split_heads(q) * self.d_k**-0.5, self.split_heads(k).transpose(-2, -1))
        # Padded keys get -inf so real frames never attend to padding.
        pad = mask.unsqueeze(1).eq(0)  # (B, 1, 1, T)
        attn = torch.softmax(scores.masked_fill(pad, float("-inf")), dim=-1).masked_fill(pad, 0.0)
        context = torch.matmul(attn, self.split_heads(v))
        b, _, n, _ = context.shape
        context = context.transpose(1, 2).reshape(b, n, self.h * self.d_k)
        return self.linear_out(context) + memory


class EncoderLayerSANM(nn.Module):
    """Pre-norm layer; the first layer changes width (560 -> 512) and so has no residual."""

    def __init__(self, in_size: int, size: int, heads: int, ffn: int, kernel: int, shift: int):
        super().__init__()
        self.self_attn = MultiHeadedAttentionSANM(heads, in_size, size, kernel, shift)
        self.feed_forward = PositionwiseFeedForward(size, ffn)
        self.norm1 = LayerNorm(in_size)
        self.norm2 = LayerNorm(size)
        self.residual_attn = in_size == size

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attn = self.self_attn(self.norm1(x), mask)
        x = x + attn if self.residual_attn else attn
        return x + self.feed_forward(self.norm2(x))


class SenseVoiceEncoderSmall(nn.Module):
    def __init__(self, input_size: int, conf: dict):
        super().__init__()
        if not conf.get("normalize_before", True):
            raise UsageError("only normalize_before: true encoders are supported")
        size = conf["output_size"]
        args = (conf["attention_heads"], conf["linear_units"], conf["kernel_size"], conf["sanm_shfit"])
        self.output_size = size
        self.encoders0 = nn.ModuleList([EncoderLayerSANM(input_size, size, *args)])
        self.encoders = nn.ModuleList(
            [EncoderLayerSANM(size, size, *args) for _ in range(conf["num_blocks"] - 1)]
        )
        self.tp_encoders = nn.ModuleList(
            [EncoderLayerSANM(size, size, *args) for _ in range(conf["tp_blocks"])]
        )
        self.after_norm = LayerNorm(size)
        self.tp_norm = LayerNorm(size)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        n_frames = x.shape[1]
        frame_idx = torch.arange(n_frames, device=x.device)
        mask = (frame_idx[None, :] < lengths[:, None]).to(x.dtype)[:, None, :]  # (B, 1, T)
        pe = sinusoidal_encoding(n_frames, x.shape[2], x.device)
        x = x * self.output_size**0.5 + pe.to(x.dtype)
        for layer in list(self.encoders0) + list(self.encoders):
            x = layer(x, mask)
        x = self.after_norm(x)
        for layer in self.tp_encoders:
            x = layer(x, mask)
        return self.tp_norm(x)


class CTC(nn.Module):
    def __init__(self, encoder_size: int, vocab_size: int):
        super().__init__()
        self.ctc_lo = nn.Linear(encoder_size, vocab_size)


class SenseVoiceSmall(nn.Module):
    """forward() is the sherpa-onnx export contract, not FunASR's training forward."""

    def __init__(self, encoder_conf: dict, vocab_size: int, input_size: int):
        super().__init__()
        self.embed = nn.Embedding(N_PROMPT_ROWS, input_size)
        self.encoder = SenseVoiceEncoderSmall(input_size, encoder_conf)
        self.ctc = CTC(encoder_conf["output_size"], vocab_size)

    def forward(self, x, x_length, language, text_norm):
        # Inputs and outputs stay float32 whatever the model's dtype, so one
        # caller works with the fp32 and the fp16 file alike.
        x = x.to(self.embed.weight.dtype)
        batch = x.shape[0]
        fixed = torch.tensor([[EMO_QUERY_ID, EVENT_QUERY_ID]], device=x.device)
        prompts = torch.cat(
            [
                self.embed(language.long()).unsqueeze(1),
                self.embed(fixed).expand(batch, -1, -1),
                self.embed(text_norm.long()).unsqueeze(1),
            ],
            dim=1,
        )
        x = torch.cat([prompts, x], dim=1)
        encoded = self.encoder(x, x_length + 4)
        logits = self.ctc.ctc_lo(encoded)
        # No cast in the float32 trace: sherpa-onnx's export ends at ctc_lo, and a trailing
        # Cast is a graph output ONNX Runtime cannot fold away (one more logits-sized buffer).
        return logits if logits.dtype == torch.float32 else logits.float()


# ---------------------------------------------------------------------------
# Checkpoint side files
# ---------------------------------------------------------------------------


def check_checkpoint_dir(ckpt: Path) -> None:
    if not ckpt.is_dir():
        raise UsageError(f"checkpoint directory not found: {ckpt}")
    for name in CHECKPOINT_FILES:
        if not (ckpt / name).is_file():
            raise UsageError(f"checkpoint file not found: {ckpt / name}")


def read_config(path: Path) -> tuple[dict, int, int]:
    """encoder_conf and LFR m/n from config.yaml, defaults for missing keys."""
    import yaml

    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    enc = dict(DEFAULT_ENCODER_CONF)
    enc.update({k: v for k, v in (config.get("encoder_conf") or {}).items() if k in enc})
    frontend = config.get("frontend_conf") or {}
    return enc, int(frontend.get("lfr_m", DEFAULT_LFR_M)), int(frontend.get("lfr_n", DEFAULT_LFR_N))


def read_am_mvn(path: Path, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(neg_mean, inv_stddev) from a Kaldi nnet text file: the bracketed vectors
    after <AddShift> and <Rescale>."""
    tokens = path.read_text(encoding="utf-8").split()

    def vector_after(tag: str) -> np.ndarray:
        if tag not in tokens:
            raise UsageError(f"{path}: no {tag} section")
        start = tokens.index("[", tokens.index(tag)) + 1
        end = tokens.index("]", start)
        values = np.array([float(t) for t in tokens[start:end]], dtype=np.float32)
        if values.size != dim:
            raise UsageError(f"{path}: {tag} has {values.size} values, expected {dim}")
        return values

    return vector_after("<AddShift>"), vector_after("<Rescale>")


def read_state_dict(path: Path, unsafe_pickle: bool) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not unsafe_pickle)
    except Exception as exc:  # torch raises several types for bad pickles
        raise UsageError(
            f"cannot load {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            " (if you trust the file, retry with --unsafe-pickle)"
        ) from exc
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    # Checkpoints saved from DataParallel carry a "module." prefix.
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_checkpoint(ckpt: Path, unsafe_pickle: bool):
    """Model with the checkpoint's weights, tokens, cmvn and LFR settings."""
    import sentencepiece as spm

    enc, lfr_m, lfr_n = read_config(ckpt / "config.yaml")
    input_size = N_MELS * lfr_m
    state = read_state_dict(ckpt / "model.pt", unsafe_pickle)
    if "ctc.ctc_lo.weight" not in state:
        raise UsageError(f"{ckpt / 'model.pt'}: no ctc.ctc_lo.weight, not a SenseVoiceSmall state dict")
    vocab_size = state["ctc.ctc_lo.weight"].shape[0]
    model = SenseVoiceSmall(enc, vocab_size, input_size)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise UsageError(f"{ckpt / 'model.pt'} does not match the architecture: {first}") from exc

    sp = spm.SentencePieceProcessor(model_file=str(ckpt / BPE_MODEL_NAME))
    if sp.get_piece_size() != vocab_size:
        raise UsageError(
            f"{ckpt / BPE_MODEL_NAME} has {sp.get_piece_size()} pieces, the CTC head {vocab_size}"
        )
    tokens = [sp.id_to_piece(i) for i in range(vocab_size)]
    neg_mean, inv_stddev = read_am_mvn(ckpt / "am.mvn", input_size)
    return model, tokens, neg_mean, inv_stddev, lfr_m, lfr_n


# ---------------------------------------------------------------------------
# Random-init build
# ---------------------------------------------------------------------------


def synthetic_tokens(vocab_size: int) -> list[str]:
    """A vocabulary shaped like the real one: specials first, word pieces, then tags
    at their real ids; tag slots whose names are unknown get <|tagNNNNN|>."""
    tokens = ["<unk>", "<s>", "</s>"]  # id 0 doubles as the CTC blank, as in the release
    tokens += [f"\u2581w{i}" for i in range(len(tokens), FIRST_TAG_ID)]
    tokens += [f"<|tag{i}|>" for i in range(FIRST_TAG_ID, vocab_size)]
    for piece, idx in REAL_TAG_IDS.items():
        tokens[idx] = piece
    return tokens


def random_model(seed: int):
    """Full-size model with random weights and sane-looking frontend statistics."""
    torch.manual_seed(seed)
    input_size = N_MELS * DEFAULT_LFR_M
    model = SenseVoiceSmall(DEFAULT_ENCODER_CONF, VOCAB_SIZE, input_size)
    rng = np.random.default_rng(seed)
    # Real log-mel means are around 10 on the int16 scale, stddevs around 3-6.
    neg_mean = (-10.0 + rng.normal(0.0, 2.0, input_size)).astype(np.float32)
    inv_stddev = (0.2 + rng.uniform(-0.05, 0.05, input_size)).astype(np.float32)
    return model, synthetic_tokens(VOCAB_SIZE), neg_mean, inv_stddev, DEFAULT_LFR_M, DEFAULT_LFR_N


def warn_not_real(out: Path) -> None:
    banner = "!" * 72
    print(f"{banner}\n{WARNING_TEXT}{banner}", file=sys.stderr)
    (out / "WARNING_NOT_A_REAL_MODEL.txt").write_text(WARNING_TEXT, encoding="utf-8")


# ---------------------------------------------------------------------------
# ONNX writing
# ---------------------------------------------------------------------------


def example_inputs(input_size: int):
    """Batch of two with different lengths, so the traced graph keeps the masks."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 37, input_size, generator=g)
    x_length = torch.tensor([30, 37], dtype=torch.int32)
    language = torch.tensor([0, 3], dtype=torch.int32)
    text_norm = torch.tensor([14, 15], dtype=torch.int32)
    return x, x_length, language, text_norm


def export_graph(model: nn.Module, path: Path, opset: int, input_size: int) -> None:
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The legacy exporter's deprecation notice and the tracer's note about the
        # constant prompt ids are expected; they would bury the useful output.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            model,
            example_inputs(input_size),
            str(path),
            dynamo=False,  # TorchScript exporter: no onnxscript needed, dynamic_axes works
            opset_version=opset,
            input_names=["x", "x_length", "language", "text_norm"],
            output_names=["logits"],
            dynamic_axes={
                "x": {0: "N", 1: "T"},
                "x_length": {0: "N"},
                "language": {0: "N"},
                "text_norm": {0: "N"},
                "logits": {0: "N", 1: "T_plus_4"},
            },
        )


def float_list(values: np.ndarray) -> str:
    """Comma-separated shortest float32 round-trip text (as am.mvn writes them)."""
    return ",".join(np.format_float_positional(np.float32(v), unique=True, trim="-") for v in values)


def build_metadata(neg_mean, inv_stddev, lfr_m, lfr_n, vocab_size, random_init) -> dict:
    meta = {
        "model_type": "sense_voice_ctc",
        "version": SHERPA_META_VERSION,
        "lfr_window_size": lfr_m,
        "lfr_window_shift": lfr_n,
        "normalize_samples": 0,  # features from samples on the int16 scale
        "neg_mean": float_list(neg_mean),
        "inv_stddev": float_list(inv_stddev),
        "vocab_size": vocab_size,
        **PROMPT_IDS,
        "blank_id": 0,
    }
    if random_init:
        meta["random_init"] = 1
    return {k: str(v) for k, v in meta.items()}


def set_metadata(path: Path, meta: dict) -> None:
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def write_fp32(model, path: Path, opset: int, input_size: int, meta: dict) -> None:
    export_graph(model, path, opset, input_size)
    set_metadata(path, meta)


def write_int8(fp32_path: Path, path: Path, meta: dict) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # QUInt8: sherpa-onnx found QInt8 MatMul weights give wrong results in C++ ORT.
    quantize_dynamic(
        model_input=str(fp32_path),
        model_output=str(path),
        op_types_to_quantize=["MatMul"],
        weight_type=QuantType.QUInt8,
    )
    set_metadata(path, meta)  # quantization does not promise to keep metadata


def write_fp16(model, path: Path, opset: int, input_size: int, meta: dict) -> None:
    # Tracing a half copy gives fp16 weights and compute with the float32 casts at
    # the edges that forward() adds; LayerNorm and position encoding stay float32.
    export_graph(copy.deepcopy(model).half(), path, opset, input_size)
    set_metadata(path, meta)


def write_tokens(tokens: list[str], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, piece in enumerate(tokens):
            f.write(f"{piece} {i}\n")


# ---------------------------------------------------------------------------
# Self-check of the written files
# ---------------------------------------------------------------------------


def verify(model: nn.Module, out: Path, formats: list[str], input_size: int) -> None:
    """Run every written file in onnxruntime on the example batch and compare with
    torch. Prints the deviations; raises when fp32 does not match torch."""
    import onnxruntime as ort

    inputs = example_inputs(input_size)
    with torch.no_grad():
        ref = model.eval()(*inputs).numpy()
    feeds = dict(zip(["x", "x_length", "language", "text_norm"], (t.numpy() for t in inputs)))
    for fmt in formats:
        path = out / FORMAT_FILES[fmt]
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(["logits"], feeds)[0]
        valid = [got[i, : int(n) + 4] - ref[i, : int(n) + 4] for i, n in enumerate(inputs[1])]
        max_err = max(float(np.abs(d).max()) for d in valid)
        agree = float(np.mean(got[1].argmax(-1) == ref[1].argmax(-1)))
        print(f"verify {path.name}: logits {got.shape}, max|diff| vs torch {max_err:.3g}, argmax agreement {agree:.1%}")
        if fmt == "fp32" and max_err > 1e-3:
            raise RuntimeError(f"{path.name} differs from torch by {max_err}")


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

FORMAT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="SenseVoiceSmall checkpoint directory")
    src.add_argument("--random-init", action="store_true", help="random weights (benchmarks only)")
    p.add_argument("--out", type=Path, required=True, help="output model directory")
    p.add_argument("--formats", default="fp32,int8,fp16", help="comma list of fp32,int8,fp16")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset (>= 13; default 13 as sherpa-onnx)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime self-check")
    p.add_argument("--unsafe-pickle", action="store_true", help="torch.load model.pt with weights_only=False")
    return p.parse_args(argv)


def parse_formats(text: str) -> list[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMAT_FILES]
    if unknown or not formats:
        raise UsageError(f"--formats: unknown {unknown or text!r}; choose from fp32,int8,fp16")
    return [f for f in FORMAT_FILES if f in formats]  # fp32 first: int8 is made from it


def export_all(args: argparse.Namespace) -> None:
    formats = parse_formats(args.formats)
    if args.opset < 13:
        raise UsageError("--opset must be 13 or newer")
    if args.checkpoint is not None:
        check_checkpoint_dir(args.checkpoint)
        model, tokens, neg_mean, inv_stddev, lfr_m, lfr_n = load_checkpoint(args.checkpoint, args.unsafe_pickle)
    else:
        model, tokens, neg_mean, inv_stddev, lfr_m, lfr_n = random_model(args.seed)
    model.eval()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.random_init:
        warn_not_real(out)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.1f}M parameters, vocab {len(tokens)}", file=sys.stderr)

    input_size = N_MELS * lfr_m
    meta = build_metadata(neg_mean, inv_stddev, lfr_m, lfr_n, len(tokens), args.random_init)
    write_tokens(tokens, out / "tokens.txt")
    fp32_path = out / FORMAT_FILES["fp32"]
    # int8 is quantized from the fp32 file; when fp32 is not wanted it is a temp file.
    need_fp32 = "fp32" in formats or "int8" in formats
    if need_fp32:
        timed("fp32", write_fp32, model, fp32_path, args.opset, input_size, meta)
    if "int8" in formats:
        timed("int8", write_int8, fp32_path, out / FORMAT_FILES["int8"], meta)
    if need_fp32 and "fp32" not in formats:
        fp32_path.unlink()
    if "fp16" in formats:
        timed("fp16", write_fp16, model, out / FORMAT_FILES["fp16"], args.opset, input_size, meta)
    if not args.no_verify:
        verify(model, out, formats, input_size)
    for name in ["tokens.txt"] + [FORMAT_FILES[f] for f in formats]:
        print(f"wrote {out / name} ({os.path.getsize(out / name) / 1e6:.1f} MB)", file=sys.stderr)
    if args.random_init:
        warn_not_real(out)  # again at the end, where it is seen


def timed(label: str, fn, *args) -> None:
    start = time.perf_counter()
    fn(*args)
    print(f"{label}: {time.perf_counter() - start:.1f} s", file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        export_all(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
