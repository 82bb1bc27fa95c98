"""GGUF reference side, with the `gguf` package (gguf-py). Usage:
  gguf_ref.py write OUT.gguf SEED
      A file written by gguf's GGUFWriter: metadata of every value type (arrays included) and a
      tensor of every type llmtrain dequantizes, with random blocks. Also writes
      OUT.gguf.expected.safetensors: gguf.quants.dequantize of each tensor (float32, row-major).
      Prints {"metadata": {key: [type, value]}, "tensors": {name: [type, shape]}}.
  gguf_ref.py read OURS.gguf VALUES.safetensors
      Reads a file written by llmtrain with GGUFReader; checks every tensor's bytes equal
      gguf.quants.quantize(values) for its type, or for Q4_K and Q6_K (which gguf cannot quantize)
      llama.cpp's own quantizer (ggml_quantize_chunk of libggml-base, see ggml_library), and prints
      metadata and tensors as above, with the tensors each reference checked.
  gguf_ref.py check_convert FILE.gguf CONVERTED.safetensors
      Compares llmtrain's `convert` output with gguf.quants.dequantize, tensor by tensor, bit by bit.
  gguf_ref.py describe FILE.gguf
      Prints {"n_metadata": n, "tensors": {name: [type, row-major shape]}} as GGUFReader sees them.
"""
import ctypes
import os
import sys

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUFReader, GGUFValueType, GGUFWriter
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize
from safetensors.numpy import load_file, save_file

from common import emit

# Byte offsets of the f16 scale fields in one block: random bytes there could be NaN/inf.
F16_FIELDS = {T.Q8_0: [0], T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2],
              T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}


def ggml_library():
    """ggml's base library as scripts/build-ggml-reference builds it from the pinned llama-cpp-python
    sdist (llama.cpp's sources): .venv/ggml/libggml-base.so, or $LLMTRAIN_GGML_BASE. None if absent."""
    path = os.environ.get("LLMTRAIN_GGML_BASE") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", ".venv", "ggml", "libggml-base.so")
    if not os.path.exists(path):
        return None
    lib = ctypes.CDLL(path)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return lib


def ggml_quantize(lib, values, qtype):
    """llama.cpp's quantization of float32 `values` (rows × n) to `qtype` without an importance
    matrix: ggml_quantize_chunk, which llama-quantize calls (ggml's reference quantizers)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    n = values.shape[-1]
    rows = values.size // n
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    out = np.zeros(rows * (n // block_elems) * block_bytes, dtype=np.uint8)
    written = lib.ggml_quantize_chunk(int(qtype), values.ctypes.data, out.ctypes.data, 0, rows, n, None)
    assert written == out.size, (written, out.size)
    return out


def random_blocks(rng, qtype, rows, ne0):
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    n_blocks = rows * ne0 // block_elems
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for p in F16_FIELDS[qtype]:
        scale = (rng.standard_normal(n_blocks) * 0.01).astype(np.float16)
        raw[:, p:p + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(rows, ne0 // block_elems * block_bytes)  # a byte shape


def field_value(field):
    value = field.contents()
    if isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
        value = [float(v) for v in value] if isinstance(value, list) else float(value)
    types = [t.name for t in field.types]
    return [types, value]


def describe(reader):
    meta = {k: field_value(f) for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: [t.tensor_type.name, [int(d) for d in reversed(t.shape.tolist())]]
               for t in reader.tensors}
    return meta, tensors


def write(out, seed):
    rng = np.random.default_rng(seed)
    w = GGUFWriter(out, arch="llmtrain_test")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 0.1)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo ✓")
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -(2**62))
    w.add_float64("test.f64", 0.1)
    w.add_array("test.array.strings", ["a", "", "bc", "✓"])
    w.add_array("test.array.i32", [1, -2, 3])
    w.add_array("test.array.f32", [0.5, -1.25])
    w.add_array("test.array.bools", [True, False])
    w.add_key_value("test.array.u64", [1, 2**64 - 1], GGUFValueType.ARRAY, sub_type=GGUFValueType.UINT64)

    expected = {}
    x = rng.standard_normal((3, 512)).astype(np.float32)
    w.add_tensor("f32", x)
    expected["f32"] = x
    w.add_tensor("f16", x.astype(np.float16))
    expected["f16"] = x.astype(np.float16).astype(np.float32)
    bf16 = quantize(x, T.BF16)
    w.add_tensor("bf16", bf16, raw_dtype=T.BF16)
    expected["bf16"] = dequantize(bf16, T.BF16)
    for i, qtype in enumerate([T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K]):
        rows = 2 + i % 3
        q = random_blocks(rng, qtype, rows, 512)
        w.add_tensor(qtype.name.lower(), q, raw_dtype=qtype)
        expected[qtype.name.lower()] = dequantize(q, qtype)
    # A 3-D and a 1-D tensor: shapes must come out reversed from the stored dims.
    q = random_blocks(rng, T.Q4_K, 4, 256).reshape(2, 2, 144)
    w.add_tensor("q4_k_3d", q, raw_dtype=T.Q4_K)
    expected["q4_k_3d"] = dequantize(q, T.Q4_K)
    v = rng.standard_normal(7).astype(np.float32)
    w.add_tensor("vector", v)
    expected["vector"] = v
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in expected.items()},
              out + ".expected.safetensors")
    meta, tensors = describe(GGUFReader(out))
    emit({"metadata": meta, "tensors": tensors})


def read(path, values_path):
    reader = GGUFReader(path)
    values = load_file(values_path)
    problems = []
    checked = {"gguf": [], "ggml": []}
    lib = None
    for t in reader.tensors:
        if t.name not in values:
            problems.append(f"{t.name}: no values given")
            continue
        got = np.asarray(t.data)
        if t.tensor_type in (T.Q4_K, T.Q6_K):
            lib = lib or ggml_library()
            if lib is None:
                problems.append(f"{t.name}: no libggml-base to quantize {t.tensor_type.name} with "
                                "(scripts/build-ggml-reference)")
                continue
            want = ggml_quantize(lib, values[t.name], t.tensor_type)
            checked["ggml"].append(t.name)
            if want.tobytes() != got.tobytes():
                blocks = GGML_QUANT_SIZES[t.tensor_type][1]
                a = want.reshape(-1, blocks)
                b = got.reshape(-1, blocks)
                differ = int((a != b).any(axis=1).sum())
                problems.append(f"{t.name}: {differ} of {a.shape[0]} blocks differ from llama.cpp's "
                                f"{t.tensor_type.name} quantizer")
            continue
        want = quantize(values[t.name], t.tensor_type)
        checked["gguf"].append(t.name)
        if want.tobytes() != got.tobytes():
            problems.append(f"{t.name}: bytes differ from gguf.quants.quantize as {t.tensor_type.name}")
    meta, tensors = describe(reader)
    emit({"ok": not problems, "problems": problems, "checked": checked, "metadata": meta, "tensors": tensors})


def check_convert(gguf_path, converted_path):
    reader = GGUFReader(gguf_path)
    ours = load_file(converted_path)
    problems = []
    for t in reader.tensors:
        want = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        got = ours.get(t.name)
        if got is None:
            problems.append(f"{t.name}: missing")
        elif got.dtype != np.float32 or list(got.shape) != list(want.shape):
            problems.append(f"{t.name}: {got.dtype}{list(got.shape)} vs float32{list(want.shape)}")
        elif got.view(np.uint32).tobytes() != want.view(np.uint32).tobytes():
            problems.append(f"{t.name}: {int((got.view(np.uint32) != want.view(np.uint32)).sum())} values differ")
    types = sorted({t.tensor_type.name for t in reader.tensors})
    emit({"equal": not problems and len(ours) == len(reader.tensors), "problems": problems[:20],
          "n_tensors": len(reader.tensors), "types": types})


def describe_file(path):
    meta, tensors = describe(GGUFReader(path))
    emit({"n_metadata": len(meta), "tensors": tensors})


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "describe":
        describe_file(sys.argv[2])
    elif cmd == "write":
        write(sys.argv[2], int(sys.argv[3]))
    elif cmd == "read":
        read(sys.argv[2], sys.argv[3])
    elif cmd == "check_convert":
        check_convert(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown command {cmd}")
