#!/usr/bin/env python3
"""FunASR's SenseVoiceSmall, full size, with RANDOM weights, in FunASR's own model-directory format, for the
upload benchmark's peer (`funasr-server --model-path DIR`, see scripts/run_funasr_peer.sh).

Run it with the peer's environment, not this repository's (it needs funasr, torch and sentencepiece):

    /work/peer-env/bin/python scripts/build_funasr_peer_model.py --out /work/peer-model

The architecture is the published config.yaml of iic/SenseVoiceSmall (as FunASR's docs/tutorial/README.md
prints it), built through FunASR's own AutoModel and its registered SenseVoiceSmall class; the tokenizer is a
SentencePiece model of the real vocabulary size (25,055 pieces, tag pieces at their real ids) and am.mvn holds
synthetic CMVN statistics. The weights and the text differ from the release, the compute does not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

VOCAB_SIZE = 25055
FIRST_TAG_ID = 24884  # ids from here on are <|...|> tags in the released vocabulary
BPE_NAME = "chn_jpn_yue_eng_ko_spectok.bpe.model"
INPUT_SIZE = 80 * 7  # n_mels x lfr_m

CONFIG_YAML = """\
encoder: SenseVoiceEncoderSmall
encoder_conf:
    output_size: 512
    attention_heads: 4
    linear_units: 2048
    num_blocks: 50
    tp_blocks: 20
    dropout_rate: 0.1
    positional_dropout_rate: 0.1
    attention_dropout_rate: 0.1
    input_layer: pe
    pos_enc_class: SinusoidalPositionEncoder
    normalize_before: true
    kernel_size: 11
    sanm_shfit: 0
    selfattention_layer_type: sanm

model: SenseVoiceSmall
model_conf:
    length_normalized_loss: true
    sos: 1
    eos: 2
    ignore_id: -1

tokenizer: SentencepiecesTokenizer
tokenizer_conf:
  bpemodel: null
  unk_symbol: <unk>
  split_with_space: true

frontend: WavFrontend
frontend_conf:
    fs: 16000
    window: hamming
    n_mels: 80
    frame_length: 25
    frame_shift: 10
    lfr_m: 7
    lfr_n: 6
    cmvn_file: null
"""

CONFIGURATION_JSON = {
    "framework": "pytorch",
    "task": "auto-speech-recognition",
    "model": {"type": "funasr"},
    "pipeline": {"type": "funasr-pipeline"},
    "file_path_metas": {
        "init_param": "model.pt",
        "config": "config.yaml",
        "tokenizer_conf": {"bpemodel": BPE_NAME},
        "frontend_conf": {"cmvn_file": "am.mvn"},
    },
}


def write_tokenizer(path: Path) -> None:
    """A unigram SentencePiece model written as its protobuf: <unk> <s> </s>, word pieces, then tag pieces."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    kinds = pb.ModelProto.SentencePiece
    for i in range(VOCAB_SIZE):
        piece = proto.pieces.add()
        if i < 3:
            piece.piece, piece.type, piece.score = ("<unk>", "<s>", "</s>")[i], (
                kinds.UNKNOWN if i == 0 else kinds.CONTROL), 0.0
        elif i < FIRST_TAG_ID:
            piece.piece, piece.type, piece.score = f"\u2581w{i}", kinds.NORMAL, -float(i) / VOCAB_SIZE
        else:
            piece.piece, piece.type, piece.score = f"<|tag{i}|>", kinds.USER_DEFINED, 0.0
    spec = proto.trainer_spec
    spec.model_type, spec.vocab_size = pb.TrainerSpec.UNIGRAM, VOCAB_SIZE
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
    proto.normalizer_spec.name, proto.normalizer_spec.add_dummy_prefix = "identity", True
    path.write_bytes(proto.SerializeToString())


def write_cmvn(path: Path, seed: int) -> None:
    """Kaldi nnet text as FunASR's load_cmvn reads it: <AddShift> = -mean, <Rescale> = 1/stddev."""
    rng = np.random.default_rng(seed)
    # Real log-mel means are around 10 on the int16 scale, stddevs around 3-6.
    neg_mean = -10.0 + rng.normal(0.0, 2.0, INPUT_SIZE)
    inv_std = 0.2 + rng.uniform(-0.05, 0.05, INPUT_SIZE)
    row = lambda v: " ".join(f"{x:.6f}" for x in v)  # noqa: E731
    path.write_text(f"<Nnet>\n<Splice> {INPUT_SIZE} {INPUT_SIZE}\n[ 0 ]\n"
                    f"<AddShift> {INPUT_SIZE} {INPUT_SIZE}\n<LearnRateCoef> 0 [ {row(neg_mean)} ]\n"
                    f"<Rescale> {INPUT_SIZE} {INPUT_SIZE}\n<LearnRateCoef> 0 [ {row(inv_std)} ]\n</Nnet>\n",
                    encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/work/peer-model"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.yaml").write_text(CONFIG_YAML, encoding="utf-8")
    (args.out / "configuration.json").write_text(json.dumps(CONFIGURATION_JSON, indent=1), encoding="utf-8")
    write_tokenizer(args.out / BPE_NAME)
    write_cmvn(args.out / "am.mvn", args.seed)
    (args.out / "model.pt").unlink(missing_ok=True)

    import torch
    from funasr import AutoModel

    # No model.pt yet: FunASR builds the registered class from config.yaml with torch's initialisation.
    built = AutoModel(model=str(args.out), device="cpu", disable_update=True, seed=args.seed, ncpu=1)
    vocab = built.kwargs["tokenizer"].get_vocab_size()
    if vocab != VOCAB_SIZE:
        print(f"build_funasr_peer_model: tokenizer has {vocab} pieces, expected {VOCAB_SIZE}", file=sys.stderr)
        return 1
    torch.save(built.model.state_dict(), args.out / "model.pt")
    params = sum(p.numel() for p in built.model.parameters())
    (args.out / "RANDOM_WEIGHTS_NOT_A_REAL_MODEL.txt").write_text(
        "Full-size SenseVoiceSmall architecture with RANDOM weights, a synthetic vocabulary and synthetic CMVN, "
        "for benchmarking FunASR's server only. Its transcripts are meaningless.\n", encoding="utf-8")
    print(json.dumps({"out": str(args.out), "class": type(built.model).__name__, "parameters": params,
                      "vocab_size": vocab}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
