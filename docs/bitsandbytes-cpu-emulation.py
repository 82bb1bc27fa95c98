"""NumPy reference of what bitsandbytes 0.50.2 computes on CPU (x86-64 build, torch 2.15).

Everything here is plain float32 IEEE arithmetic done with numpy float32 scalars/arrays
(no FMA except where stated and emulated exactly via float64).

Public functions mirror bitsandbytes.functional:
  quantize_4bit_ref(A, blocksize, quant_type, compress_statistics) -> (packed, state dict)
  dequantize_4bit_ref(packed, state, path=...)                     -> array in state['dtype']
  quantize_blockwise_ref(A, code, blocksize)                        -> (q uint8, absmax f32)
  dequantize_blockwise_ref(q, absmax, code, blocksize)              -> f32
  int8_vectorwise_quant_ref(A, threshold)                           -> (int8, row_stats f32, outlier_cols)
  int8_vectorwise_dequant_ref(q, stats)                             -> f32
  torch_mean_f32(x)                                                 -> emulation of torch.mean (float32, CPU)
Inputs A are numpy arrays of dtype float32 / float16, or uint16 bit patterns for bfloat16
(use bf16_bits_to_f32). All inputs are converted to float32 exactly first.
"""
import numpy as np

f32 = np.float32

# ---------------------------------------------------------------- code tables
# NF4: bitsandbytes.functional.get_4bit_type('nf4') (python floats -> float32)
NF4_CODE = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)
# FP4: get_4bit_type('fp4') = float32([0,.0625,8,12,4,6,2,3,-0,-.0625,-8,-12,-4,-6,-2,-3]) / 12
# NOTE: the python literal `-0` is the *integer* 0, so index 8 is +0.0 here.
FP4_CODE = (np.array([0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0,
                      0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0], dtype=np.float32) / f32(12.0)).astype(np.float32)
# The C scalar dequant kernel's fp4_lut has -0.0f at index 8 (only observable as the sign of a zero).
FP4_CODE_C_SCALAR = FP4_CODE.copy(); FP4_CODE_C_SCALAR[8] = f32(-0.0)


def code4(quant_type):
    return NF4_CODE if quant_type == "nf4" else FP4_CODE


def create_dynamic_map_ref(signed=True, max_exponent_bits=7, total_bits=8):
    """Bit-exact port of bitsandbytes.functional.create_dynamic_map (torch.linspace float32
    then python-float (double) arithmetic, final float32 cast, sorted)."""
    import torch  # linspace(float32) rounding is what defines the table; reuse torch for it
    data = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                             else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if additional_items > 0:
        boundaries = torch.linspace(0.1, 1, additional_items + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data.append(0)
    data.append(1.0)
    data += [0] * (256 - len(data))
    data.sort()
    return np.array(data, dtype=np.float32)


# ---------------------------------------------------------------- helpers
def bf16_bits_to_f32(u16):
    return (np.asarray(u16, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x):
    """round-to-nearest-even float32 -> bfloat16 bits (finite inputs; NaN -> 0x7fc0 like torch)."""
    b = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    r[nan] = 0x7FC0
    return r


def to_f32(A):
    A = np.asarray(A)
    if A.dtype == np.float32:
        return A.copy()
    if A.dtype == np.float16:
        return A.astype(np.float32)
    if A.dtype == np.uint16:  # bf16 bit pattern
        return bf16_bits_to_f32(A)
    raise TypeError(A.dtype)


def cast_out(x32, dtype):
    """float32 -> output dtype, round-to-nearest-even (== torch .to(dtype) == C kernels)."""
    if dtype == "float32":
        return x32.astype(np.float32)
    if dtype == "float16":
        return x32.astype(np.float16)
    if dtype == "bfloat16":
        return f32_to_bf16_bits(x32)  # returned as uint16 bit pattern
    raise ValueError(dtype)


# ---------------------------------------------------------------- torch.mean emulation
def _ceil_log2(x):
    return 1 if x <= 2 else int(x - 1).bit_length()


def _multi_row_sum(rows, nrows):
    """rows: array (size, nrows, *lanes) -> ATen multi_row_sum (4-level cascade)."""
    size = rows.shape[0]
    num_levels = 4
    level_power = max(4, _ceil_log2(size) // num_levels)
    level_step = 1 << level_power
    level_mask = level_step - 1
    acc = np.zeros((num_levels,) + rows.shape[1:], dtype=np.float32)
    i = 0
    while i + level_step <= size:
        for _ in range(level_step):
            acc[0] = acc[0] + rows[i]
            i += 1
        for j in range(1, num_levels):
            acc[j] = acc[j] + acc[j - 1]
            acc[j - 1] = 0
            if (i & (level_mask << (j * level_power))) != 0:
                break
    while i < size:
        acc[0] = acc[0] + rows[i]
        i += 1
    for j in range(1, num_levels):
        acc[0] = acc[0] + acc[j]
    return acc[0]


def _row_sum(items):
    """items: (size, *lanes) -> ATen row_sum with ilp_factor 4."""
    size = items.shape[0]
    size_ilp = size // 4
    ps = _multi_row_sum(items[: size_ilp * 4].reshape((size_ilp, 4) + items.shape[1:]), 4) \
        if size_ilp > 0 else np.zeros((4,) + items.shape[1:], dtype=np.float32)
    ps = ps.copy()
    for i in range(size_ilp * 4, size):
        ps[0] = ps[0] + items[i]
    for k in range(1, 4):
        ps[0] = ps[0] + ps[k]
    return ps[0]


def torch_sum_f32(x, lanes=8):
    """ATen cascade_sum for a contiguous 1-D float32 tensor, serial case (numel < 32768).
    lanes = Vectorized<float>::size() of the dispatched CPU kernel (empirically 8 with torch 2.15 on this AVX512 machine)."""
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    n = x.size
    if n < lanes:  # scalar_inner_sum
        return f32(_row_sum(x.reshape(n)))
    vec_size = n // lanes
    vec_acc = _row_sum(x[: vec_size * lanes].reshape(vec_size, lanes))
    final = f32(0)
    for k in range(vec_size * lanes, n):
        final = f32(final + x[k])
    for k in range(lanes):
        final = f32(final + vec_acc[k])
    return final


def torch_mean_f32(x, lanes=8):
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    return f32(torch_sum_f32(x, lanes) / f32(x.size))


# ---------------------------------------------------------------- 4-bit quantize (torch 'default' op)
def _bounds_order(quant_type):
    code = code4(quant_type)
    if quant_type == "nf4":
        order = np.arange(16)
    else:
        # torch.argsort(code) result on CPU (ties: +0.0 at idx 0 before "-0"(=+0) at idx 8)
        order = np.array([11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3])
    s = code[order]
    bounds = ((s[:-1] + s[1:]) / f32(2)).astype(np.float32)
    return bounds, order


def absmax_4bit_ref(A, blocksize=64):
    x = to_f32(A).reshape(-1)
    n = x.size
    rem = n % blocksize
    full = n - rem
    am = np.abs(x[:full].reshape(-1, blocksize)).max(axis=1) if full else np.zeros(0, np.float32)
    if rem:
        am = np.concatenate([am, [max(np.abs(x[full:]).max(), f32(1e-38))]]).astype(np.float32)
    return am.astype(np.float32)


def quantize_4bit_core(A, blocksize=64, quant_type="nf4"):
    x = to_f32(A).reshape(-1)
    n = x.size
    rem = n % blocksize
    full = n - rem
    tiny = f32(1e-38)
    xc = x[:full].reshape(-1, blocksize)
    absmax = np.abs(xc).max(axis=1).astype(np.float32) if full else np.zeros(0, np.float32)
    inv = (f32(1.0) / np.maximum(absmax, tiny)).astype(np.float32)            # reciprocal
    scaled = np.clip((xc * inv[:, None]).astype(np.float32), f32(-1), f32(1)).reshape(-1)
    if rem:
        am = np.maximum(np.abs(x[full:]).max(), tiny).astype(np.float32)      # stored clamped!
        absmax = np.concatenate([absmax, [am]]).astype(np.float32)
        scaled = np.concatenate([scaled, np.clip((x[full:] / am).astype(np.float32), f32(-1), f32(1))])  # true division
    if scaled.size % 2:
        scaled = np.concatenate([scaled, np.zeros(1, np.float32)])            # pad value 0.0
    bounds, order = _bounds_order(quant_type)
    q = np.searchsorted(bounds, scaled, side="left")                          # torch.bucketize(right=False)
    q = order[q].astype(np.uint8)
    packed = ((q[0::2] << 4) | q[1::2]).astype(np.uint8).reshape(-1, 1)      # even element -> high nibble
    return packed, absmax


# ---------------------------------------------------------------- 8-bit blockwise (C LUT kernel)
_LUT_CACHE = {}


def build_quantize_lut(code):
    key = code.tobytes()
    if key in _LUT_CACHE:
        return _LUT_CACHE[key]
    code = np.asarray(code, dtype=np.float32)
    mid = ((code[:-1] + code[1:]) * f32(0.5)).astype(np.float32)
    i = np.arange(65536, dtype=np.float32)
    val = (((i + i) / f32(65535.0)).astype(np.float32) - f32(1.0)).astype(np.float32)
    # lut[i] = min(#{k < 255 : mid[k] < val}) == searchsorted(mid, val, 'left') since mid is sorted
    lut = np.searchsorted(mid, val, side="left").astype(np.uint8)
    _LUT_CACHE[key] = lut
    return lut


def quantize_blockwise_ref(A, code, blocksize):
    """bitsandbytes::quantize_blockwise on CPU for f32/f16/bf16 (libbitsandbytes_cpu quantize_cpu_impl)."""
    x = to_f32(A).reshape(-1)
    n = x.size
    nb = -(-n // blocksize)
    lut = build_quantize_lut(code)
    out = np.zeros(n, np.uint8)
    absmax = np.zeros(nb, np.float32)
    for b in range(nb):
        blk = x[b * blocksize: (b + 1) * blocksize]
        am = max(f32(0.0), np.abs(blk).max())
        absmax[b] = am
        if am == 0.0:
            continue  # out = 0 (code index 0)
        inv = f32(f32(1.0) / f32(am))
        v = np.clip((blk * inv).astype(np.float32), f32(-1), f32(1))
        t = ((v + f32(1.0)).astype(np.float32) * f32(0.5)).astype(np.float32)
        # fma(t, 65535, 0.5) rounded once to float32 (exact in float64 here), then truncation
        y = (t.astype(np.float64) * 65535.0 + 0.5).astype(np.float32)
        idx = np.trunc(y).astype(np.int64) & 0xFFFF
        out[b * blocksize: (b + 1) * blocksize] = lut[idx]
    return out.reshape(np.shape(A)), absmax


def dequantize_blockwise_ref(q, absmax, code, blocksize, dtype="float32"):
    qf = np.asarray(q).reshape(-1)
    blk = np.arange(qf.size) // blocksize
    v = (code[qf] * absmax[blk]).astype(np.float32)
    return cast_out(v, dtype).reshape(np.shape(q))


# ---------------------------------------------------------------- public 4-bit API
def quantize_4bit_ref(A, blocksize=64, quant_type="nf4", compress_statistics=False, dtype=None, lanes=8):
    packed, absmax = quantize_4bit_core(A, blocksize, quant_type)
    st = dict(shape=tuple(np.shape(A)), blocksize=blocksize, quant_type=quant_type,
              code=code4(quant_type), dtype=dtype, nested=False)
    if compress_statistics:
        offset = torch_mean_f32(absmax, lanes)
        dyn = create_dynamic_map_ref()
        qabs, nested_absmax = quantize_blockwise_ref((absmax - offset).astype(np.float32), dyn, 256)
        st.update(absmax=qabs, offset=offset, nested=True,
                  state2=dict(absmax=nested_absmax, code=dyn, blocksize=256, dtype="float32"))
    else:
        st.update(absmax=absmax)
    return packed, st


def resolve_absmax(st):
    if not st["nested"]:
        return st["absmax"]
    s2 = st["state2"]
    a = dequantize_blockwise_ref(st["absmax"], s2["absmax"], s2["code"], s2["blocksize"])
    return (a + st["offset"]).astype(np.float32)


def dequantize_4bit_ref(packed, st, dtype="float32", cpu_has_avx512=True):
    """Replicates the CPU dispatch of bitsandbytes::dequantize_4bit (functional.dequantize_4bit).
    Returns (array, out_shape). Paths:
      odd last dim, or (avx512 and blocksize>=2048)  -> torch fallback: flat blocks, FP4 idx8 = +0.0
      even last dim, last%16==0, avx512              -> C AVX512 kernel: PER-ROW absmax indexing
      other even last dim                             -> C scalar kernel: flat blocks, FP4 idx8 = -0.0
    """
    shape = st["shape"]
    bs = st["blocksize"]
    absmax = resolve_absmax(st)
    b = np.asarray(packed, dtype=np.uint8).reshape(-1)
    nib = np.stack([b >> 4, b & 15], 1).reshape(-1).astype(np.int64)
    n = int(np.prod(shape))
    nib = nib[:n]
    qt = st["quant_type"]
    last = shape[-1]
    if last % 2 != 0 or (cpu_has_avx512 and bs >= 2048):
        code = code4(qt)
        v = (code[nib] * absmax[np.arange(n) // bs]).astype(np.float32)
        out_shape = tuple(shape)
    else:
        shp = (1, shape[0]) if len(shape) == 1 else tuple(shape)
        m = int(np.prod(shp[:-1]))
        if cpu_has_avx512 and last % 16 == 0:
            code = code4(qt)  # AVX512 LUT has +0.0 at fp4 index 8
            row = np.arange(n) // last
            col = np.arange(n) % last
            # absmax[row * (n_last // bs) + (k*2)//bs], k = packed byte index in row, stepped by 8
            k = (col // 2) // 8 * 8
            aidx = row * (last // bs) + (k * 2) // bs
        else:
            code = FP4_CODE_C_SCALAR if qt == "fp4" else NF4_CODE
            aidx = np.arange(n) // bs
        v = (code[nib] * absmax[aidx]).astype(np.float32)
        out_shape = shp
    out = cast_out(v, dtype).reshape(out_shape)
    if np.asarray(packed).shape[0] == 1:  # BC shim in functional.dequantize_4bit
        out = out.T
    return out


# ---------------------------------------------------------------- int8 (LLM.int8 row-wise)
def int8_vectorwise_quant_ref(A, threshold=0.0):
    """2-D input only (the op reduces over dim=1). A: float32/float16 or bf16 bits (uint16)."""
    is_half = np.asarray(A).dtype in (np.float16, np.uint16)
    x = to_f32(A)  # for fp16/bf16 torch computes A(half) * scale(f32) -> promoted to f32: same values
    rows = x.size // x.shape[-1]
    outlier_cols = None
    xw = x.copy()
    if threshold > 0.0:
        # threshold compared in the tensor's dtype (python float -> half for half tensors)
        thr = f32(np.float16(threshold)) if np.asarray(A).dtype == np.float16 else (
            bf16_bits_to_f32(f32_to_bf16_bits(np.array([threshold], np.float32)))[0]
            if np.asarray(A).dtype == np.uint16 else f32(threshold))
        outl = np.abs(xw) >= thr
        outlier_cols = np.nonzero(outl.any(axis=0))[0]
        xw[outl] = 0
    row_stats = np.abs(xw).max(axis=1).astype(np.float32)
    scale = ((f32(1.0) / row_stats).astype(np.float32) * f32(127.0)).astype(np.float32)  # 127.0/t == t.reciprocal()*127
    with np.errstate(invalid="ignore", divide="ignore"):
        y = (xw * scale[:, None]).astype(np.float32)
    q = np.round(y)  # numpy round == round-half-to-even, like torch.round
    q = np.where(np.isnan(q), 0, q).astype(np.int8)  # NaN (0*inf for all-zero rows) -> 0 observed on x86
    if rows > 1 and outlier_cols is not None:
        q[:, outlier_cols] = 0
    return q, row_stats, outlier_cols


def int8_vectorwise_dequant_ref(q, stats):
    return ((np.asarray(q).astype(np.float32) * np.asarray(stats, np.float32).reshape(-1, 1)).astype(np.float32)
            * f32(7.874015718698502e-3)).astype(np.float32)
