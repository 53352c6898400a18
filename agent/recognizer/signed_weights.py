"""The int8 export's weights as signed bytes: the same model, on ONNX Runtime's faster x86 kernels.

The public int8 exports (sherpa-onnx's model.int8.onnx, FunASR's model_quant.onnx) are dynamically
quantized with uint8 weights: every MatMulInteger multiplies uint8 activations by uint8 weights,
and on x86-64 ONNX Runtime's kernel for that pair is the slow one. Weights and their zero point
shifted by -128 (uint8 w -> int8 w - 128, one XOR 0x80 per byte) give the same integer products, so
the same output bit for bit, on the uint8 x int8 kernel (exact with VNNI: ort_cache.signed_kernels_exact):
a 10 s decode of the full-size model on 2 threads took 121 instead of 188 ms on an AMD EPYC
(docs/benchmarks/recognizer.md).

The copy is written without the onnx package (not a runtime dependency), by walking the protobuf
wire format: the weights' bytes keep their length and are shifted as they are copied; the zero
points (scalars, often kept in int32_data) are written again as one int8 byte each, and the graph's
length prefix follows. A weight is changed only where every use of it, and of its zero point, is a
MatMulInteger's B input and zero point; anything else leaves the model as it was.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

UINT8, INT8 = 2, 3  # onnx.TensorProto.DataType
_LEN, _VARINT, _I64, _I32 = 2, 0, 1, 5
# ModelProto.graph; GraphProto.node, .initializer, .input; NodeProto.input, .op_type; TensorProto fields
_GRAPH, _NODE, _INITIALIZER, _GRAPH_INPUT = 7, 1, 5, 11
_NODE_INPUT, _NODE_OP = 1, 4
_T_DATA_TYPE, _T_INT32, _T_NAME, _T_RAW = 2, 5, 8, 9
_SUBGRAPH_OPS = ("If", "Loop", "Scan")


def _varint(buf, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, wire type, key start, value start, value end) of each field in buf[start:end]."""
    pos = start
    while pos < end:
        key_at = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, after = _varint(buf, pos)
        elif wire == _LEN:
            length, pos = _varint(buf, pos)
            after = pos + length
        elif wire == _I64:
            after = pos + 8
        elif wire == _I32:
            after = pos + 4
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {pos}")
        yield number, wire, key_at, pos, after
        pos = after


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _encode_varint(number << 3 | wire)


class _Tensor:
    def __init__(self):
        self.name = ""
        self.data_type = 0
        self.raw: Optional[Tuple[int, int]] = None
        self.int32: List[int] = []
        self.others: List[Tuple[int, int]] = []  # the fields kept as they are (key start, end)

    def has_bytes(self) -> bool:
        """Its values are bytes: raw_data, or uint8 values in int32_data (scalar zero points)."""
        return self.raw is not None or (bool(self.int32) and all(0 <= v <= 255 for v in self.int32))

    def size(self) -> int:
        """Its length once written signed."""
        data = self.raw[1] - self.raw[0] if self.raw is not None else len(self.int32)
        kept = sum(e - s for s, e in self.others)
        return kept + len(_key(_T_DATA_TYPE, _VARINT)) + 1 + len(_key(_T_RAW, _LEN)) + len(_encode_varint(data)) + data


def _tensor(buf, start: int, end: int) -> _Tensor:
    t = _Tensor()
    for n, w, k, s, e in _fields(buf, start, end):
        if n == _T_DATA_TYPE and w == _VARINT:
            t.data_type = _varint(buf, s)[0]
        elif n == _T_RAW and w == _LEN:
            t.raw = (s, e)
        elif n == _T_INT32 and w == _LEN:  # packed
            pos = s
            while pos < e:
                value, pos = _varint(buf, pos)
                t.int32.append(value)
        elif n == _T_INT32 and w == _VARINT:
            t.int32.append(_varint(buf, s)[0])
        else:
            if n == _T_NAME and w == _LEN:
                t.name = bytes(buf[s:e]).decode("utf-8")
            t.others.append((k, e))
    return t


def _plan(buf):
    """(graph field, {key start of each initializer to change: its tensor}), or None when the model is
    not one this rewrite is sure of or has nothing to change."""
    graph = next(((k, s, e) for n, w, k, s, e in _fields(buf, 0, len(buf)) if n == _GRAPH and w == _LEN), None)
    if graph is None:
        return None
    tensors: Dict[str, Tuple[int, _Tensor]] = {}
    uses: Dict[str, List[Tuple[str, int]]] = {}
    pairs: List[Tuple[str, str]] = []  # MatMulInteger (B, B's zero point)
    graph_inputs = set()
    for number, wire, key_at, start, end in _fields(buf, graph[1], graph[2]):
        if wire != _LEN:
            continue
        if number == _NODE:
            inputs, op = [], ""
            for n, w, k, s, e in _fields(buf, start, end):
                if n == _NODE_INPUT and w == _LEN:
                    inputs.append(bytes(buf[s:e]).decode("utf-8"))
                elif n == _NODE_OP and w == _LEN:
                    op = bytes(buf[s:e]).decode("utf-8")
            if op in _SUBGRAPH_OPS:
                return None  # a subgraph may use an initializer too
            for i, name in enumerate(inputs):
                if name:
                    uses.setdefault(name, []).append((op, i))
            if op == "MatMulInteger" and len(inputs) >= 4 and inputs[1] and inputs[3]:
                pairs.append((inputs[1], inputs[3]))
        elif number == _INITIALIZER:
            t = _tensor(buf, start, end)
            tensors[t.name] = (key_at, t)
        elif number == _GRAPH_INPUT:
            for n, w, k, s, e in _fields(buf, start, end):
                if n == 1 and w == _LEN:  # ValueInfoProto.name: an initializer listed as an input declares its type
                    graph_inputs.add(bytes(buf[s:e]).decode("utf-8"))
    chosen: Dict[str, Tuple[int, _Tensor]] = {}
    for weight, zero in pairs:
        w, z = tensors.get(weight), tensors.get(zero)
        if w is None or z is None or weight in graph_inputs or zero in graph_inputs:
            continue
        if w[1].data_type != UINT8 or z[1].data_type != UINT8 or w[1].raw is None or not z[1].has_bytes():
            continue
        if all(u == ("MatMulInteger", 1) for u in uses[weight]) and all(u == ("MatMulInteger", 3) for u in uses[zero]):
            chosen[weight], chosen[zero] = w, z
    for weight, zero in pairs:  # a zero point shared with a weight left unsigned would shift under it
        if (zero in chosen) != (weight in chosen):
            return None
    if not chosen:
        return None
    return graph, {key_at: t for key_at, t in chosen.values()}


def _write_tensor(out, buf, t: _Tensor) -> None:
    for s, e in t.others:
        out.write(buf[s:e])
    out.write(_key(_T_DATA_TYPE, _VARINT) + bytes([INT8]))
    if t.raw is not None:
        start, end = t.raw
        out.write(_key(_T_RAW, _LEN) + _encode_varint(end - start))
        for at in range(start, end, 1 << 22):  # 4 MiB at a time: memory stays flat
            chunk = np.frombuffer(buf, np.uint8, min(1 << 22, end - at), at)
            out.write((chunk ^ np.uint8(0x80)).tobytes())  # uint8 w -> int8 w - 128: the same bits
            del chunk
    else:
        data = bytes(v ^ 0x80 for v in t.int32)
        out.write(_key(_T_RAW, _LEN) + _encode_varint(len(data)) + data)


def write_signed(model: Path, out_path: Path) -> int:
    """Copy `model` to `out_path` with its MatMulInteger weights as int8; the number of tensors changed
    (0: nothing to change, `out_path` not written)."""
    with open(model, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        planned = _plan(buf)
        if planned is None:
            return 0
        (graph_key, graph_start, graph_end), changed = planned
        pieces = []  # the graph's fields: (key start, end, tensor to write signed or None)
        length = 0
        for number, wire, key_at, start, end in _fields(buf, graph_start, graph_end):
            t = changed.get(key_at) if number == _INITIALIZER else None
            pieces.append((key_at, end, t))
            if t is None:
                length += end - key_at
            else:
                length += len(_key(_INITIALIZER, _LEN)) + len(_encode_varint(t.size())) + t.size()
        with open(out_path, "wb") as out:
            out.write(buf[:graph_key])
            out.write(_key(_GRAPH, _LEN) + _encode_varint(length))
            for key_at, end, t in pieces:
                if t is None:
                    out.write(buf[key_at:end])
                else:
                    out.write(_key(_INITIALIZER, _LEN) + _encode_varint(t.size()))
                    _write_tensor(out, buf, t)
            out.write(buf[graph_end:])
    return len(changed)
