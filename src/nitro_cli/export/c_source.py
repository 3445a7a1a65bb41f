"""The plan as dependency-free C99: integer types only, no floating point, no dynamic allocation.

Files:
- `nitro_model.h`: the API (`nitro_predict`, `nitro_forward`), the input geometry and the scratch memory
  (`nitro_scratch`, `NITRO_SCRATCH_BYTES`) the forward pass works in.
- `nitro_weights.c`, `nitro_weights.h`: the weights as 8-bit limb rows in `const uint8_t` arrays written as
  string literals (a compiler reads them as fast as binary data, unlike lists of numbers), the zero-point
  corrections and limb counts as small `const` integer arrays, and the normalizer table.
- `nitro_model.c`: the forward pass, one function per layer with its dimensions as constants.
- `main.c`: a driver that reads IDX (MNIST, FashionMNIST) or CIFAR-10 binary test files and prints the
  accuracy as an integer ratio (and, with --logits, every image's logits).

Everything else the writer emits is built here: identifiers from nitro's own layer names (`_ident`), numbers,
and one piece of free text, the banner, which goes into comments only and passes through `comment_text`.

How a product runs, and why it is exact (every bound is checked here and written beside its code):
- Activations are stored as uint8, the int8 value plus 128, channels last (h, w, c) as in nitro; an MLP
  reads the image in (c, h, w) order, as nitro flattens it.
- Each output's weights are split into the fewest exact balanced 8-bit limbs that hold that output's row,
  W = sum_i L_i * 256^i with L_i in [-128, 127] (`plan.balanced_limbs`): one limb row per limb, so a row
  of small weights costs one pass and only the rows that need a third limb pay for it.
- A limb row and the layer's input (a conv's 3x3 patch in (ky, kx, c) order, or the input vector) are dot
  products of uint8 x int8 terms of at most 255 * 128 each, summed in int32_t: |sum| <= K * 255 * 128,
  below 2^31 for any fan-in K up to 65,536 (VGG11B's largest is 4,608). The shift's contribution,
  128 * (sum of the limb row), is a constant per row, subtracted exactly in int32_t (`nitro_c_<layer>`).
- The exact limb sums s_i (|s_i| <= K * 128 * max|L_i|) are combined by Horner's rule, z = s_0 + 256 *
  (s_1 + 256 * ...), in int32_t where the sum of those bounds times 256^i fits, else in int64_t, where it
  is below K * 2^46 < 2^63. Under compat int32_accumulation z is then reduced modulo 2^32 explicitly
  (`nitro_wrap32`, emitted only where the bound allows a wrap), as the reference's int32 accumulators did.
  C99 integer division truncates toward zero: the spec's trunc.
- Speed: the dot-product loops have constant trip counts and rows are padded with zero weights to a
  multiple of 32 values, so GCC vectorizes them at -O2 (its cheap cost model takes only loops that need no
  remainder; tests/test_export.py checks -fopt-info-vec). A convolution gathers the patches of a tile of
  pixels (up to TILE_BYTES of int16 patches), then runs blocks of outputs whose limb rows fit BLOCK_BYTES
  (read from memory once per tile) against 8 pixels at a time (one load of a weight vector serves 8 dot
  products). On x86-64 SSE2 does them with pmaddwd over int16 patches; where GCC builds for x86-64 (and
  NITRO_PORTABLE is not defined) each layer is also compiled for AVX2 and for AVX-512 VNNI (uint8 x int8
  dot products, vpdpbusd), and the forward pass picks the widest one the CPU runs
  (`__builtin_cpu_supports`; `-DNITRO_ISA_MAX=0|1|2` caps the choice). The arithmetic is the same in every
  version, integer products and sums that never wrap, so each returns identical logits.
- A string literal holds at most 4,095 characters in C99 (`-pedantic` checks it) and its terminating NUL
  must fit the row it initializes, so a row is cut into segments of at most 4,095 inputs, each followed by
  zero weights (at least one); the patch or input is laid out the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import NitroError
from .plan import ACT_BOUND, INT32_MAX, FlattenStep, Plan, Pool, Product, balanced_limbs

HEADER, WEIGHTS_HEADER, WEIGHTS, MODEL, DRIVER_FILE = ("nitro_model.h", "nitro_weights.h", "nitro_weights.c",
                                                       "nitro_model.c", "main.c")
C_FILES = (HEADER, WEIGHTS_HEADER, WEIGHTS, MODEL, DRIVER_FILE)
MODEL_SOURCES = (MODEL, WEIGHTS)  # the model without the driver (what a firmware links)
SHIFT = 128  # uint8 activation = int8 value + SHIFT
U8_MAX = 255
MAX_FAN_IN = 2**16  # K * 255 * 128 < 2^31 (limb sums) and 128 * 256 * K <= 2^31 (nitro_scale_int64)
ROW_ALIGN = 32  # values; a multiple of every vector width the loops are vectorized with
LITERAL_MAX = 4095  # characters of a string literal C99 compilers must accept
PIXELS = 8  # output pixels per pass over a block of weight rows (their dot products share the row's loads)
TILE_BYTES = 512 * 1024  # a conv's patch tile (int16_t patches): the pixels sharing one pass over the weights
BLOCK_BYTES = 256 * 1024  # a block of limb rows, read from memory once per tile and reused from cache
_PIECE = 64  # bytes per source line of a weight literal
_VALUES_PER_LINE = 24
# Characters free text may keep in a comment: no '*' or '/' (no comment end or nested start), no '?' (no
# trigraph), no backslash (no line splice), no quote, no newline or control character.
_COMMENT_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ._,:;+-=()[]")
COMMENT_LIMIT = 300
# A byte in a string literal: printable ASCII as itself, except the quote, the backslash and '?' (no
# trigraph); every other byte as an octal escape, of three digits where an octal digit follows (an escape
# takes at most three), else without its leading zeros.
_LITERAL = {b: f"\\{b:03o}" for b in range(256) if not (0x20 <= b < 0x7F) or chr(b) in '"\\?'}
_LEADING_ZEROS = (re.compile(r"\\00([0-7])(?![0-7])"), re.compile(r"\\0([0-7]{2})(?![0-7])"))


def comment_text(text: str) -> str:
    """`text` as it may appear inside a generated comment: every other character becomes '_', and it is
    cut to COMMENT_LIMIT characters. The one escaping step for free text in the C export (why: a checkpoint
    file name or a future label must never end a comment and become code)."""
    safe = "".join(ch if ch in _COMMENT_SAFE else "_" for ch in text)
    return safe if len(safe) <= COMMENT_LIMIT else safe[:COMMENT_LIMIT - 3] + "..."


def _ident(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _numbers(name: str, ctype: str, values: np.ndarray, comment: str) -> str:
    flat = values.reshape(-1).astype(np.int64).tolist()
    lines = [", ".join(map(str, flat[i:i + _VALUES_PER_LINE])) for i in range(0, len(flat), _VALUES_PER_LINE)]
    body = ",\n    ".join(lines)
    return f"/* {comment} */\nconst {ctype} {name}[{len(flat)}] = {{\n    {body}\n}};\n"


def _escaped(data: bytes) -> str:
    text = data.decode("latin-1").translate(_LITERAL)
    for zeros in _LEADING_ZEROS:
        text = zeros.sub(r"\\\1", text)
    return text


def _literal(data: bytes) -> str:
    """`data` as adjacent string literals, one source line each (trailing zeros left to the initializer)."""
    data = data.rstrip(b"\0")
    pieces = [_escaped(data[i:i + _PIECE]) for i in range(0, len(data), _PIECE)]
    return "\n    ".join(f'"{piece}"' for piece in pieces) or '""'


@dataclass(frozen=True)
class RowLayout:
    """Where a product's K inputs sit in its rows: `segments` runs of `seg_data` inputs (the last may hold
    fewer), each padded with zero weights to `seg_len` values (a multiple of ROW_ALIGN, above seg_data)."""

    fan_in: int
    seg_data: int
    segments: int

    @property
    def seg_len(self) -> int:
        return _round_up(self.seg_data + 1, ROW_ALIGN)

    @property
    def length(self) -> int:
        return self.segments * self.seg_len

    @classmethod
    def of(cls, p: Product) -> RowLayout:
        """A conv's segments hold whole taps (9, 3 or 1 of its C channels) so that patches copy channel runs;
        a linear layer's are as even as possible."""
        if p.kind == "conv":
            c = p.in_shape[0]
            taps = next((t for t in (9, 3, 1) if t * c <= LITERAL_MAX), 0)
            if not taps:
                raise NitroError(f"{p.name}: {c} input channels are too many for the C export (at most "
                                 f"{LITERAL_MAX})")
            return cls(p.fan_in, taps * c, 9 // taps)
        segments = -(-p.fan_in // LITERAL_MAX)
        return cls(p.fan_in, -(-p.fan_in // segments), segments)

    def positions(self) -> np.ndarray:
        """The row position of each input k."""
        k = np.arange(self.fan_in)
        return (k // self.seg_data) * self.seg_len + k % self.seg_data


class _Layer:
    """A product's limb rows, their constants and the C names of its data."""

    def __init__(self, p: Product) -> None:
        if p.fan_in > MAX_FAN_IN:
            raise NitroError(f"{p.name}: fan-in {p.fan_in} is too large for the C export's 8-bit limb "
                             f"products with int32 sums (at most {MAX_FAN_IN})")
        self.p = p
        self.id = _ident(p.name)
        self.layout = RowLayout.of(p)
        w = np.ascontiguousarray(p.weight.transpose(0, 2, 3, 1)).reshape(p.out_features, -1) \
            if p.kind == "conv" else p.weight  # [out][ky][kx][in]: the patch order; linear: nitro's order
        limbs = np.stack(balanced_limbs(w), axis=1)  # [O, k, K]
        used = limbs.any(axis=2)  # [O, k]; the expansion is unique: a row's limbs beyond its own are all 0
        self.limbs = np.where(used, np.arange(limbs.shape[1]), 0).max(axis=1) + 1
        rows = np.concatenate([limbs[o, :n] for o, n in enumerate(self.limbs)])  # [R, K], low limb first
        self.rows = np.zeros((len(rows), self.layout.length), dtype=np.int8)
        self.rows[:, self.layout.positions()] = rows
        self.correction = SHIFT * rows.astype(np.int64).sum(axis=1)  # |.| <= 128 * 128 * K < 2^31
        digit_max = [int(np.abs(limbs[:, i]).max()) for i in range(limbs.shape[1])]
        self.partial_bound = sum(p.fan_in * ACT_BOUND * d * 256**i for i, d in enumerate(digit_max))
        self.z = "int32_t" if self.partial_bound <= INT32_MAX else "int64_t"
        # Loop geometry of a conv: tiles of `tile` pixels' patches; blocks of `block` outputs whose limb rows
        # (at most `block_rows`) stay in cache while every pixel of the tile runs against them. A linear layer
        # has one input and one block.
        self.tile, self.block = 1, p.out_features
        if p.kind == "conv":
            length, pixels = self.layout.length, _size(p.in_shape[1:])
            self.tile = min(pixels, max(PIXELS, TILE_BYTES // (2 * length) // PIXELS * PIXELS))
            self.block = min(p.out_features, max(1, BLOCK_BYTES // (int(self.limbs.max()) * length)))
        starts = np.concatenate([[0], np.cumsum(self.limbs)])[::self.block]
        self.row_starts = np.append(starts, len(rows)) if starts[-1] != len(rows) else starts
        self.block_rows = int(np.diff(self.row_starts).max())

    @property
    def uniform(self) -> bool:
        return bool((self.limbs == self.limbs[0]).all())

    @property
    def blocks(self) -> int:
        return len(self.row_starts) - 1

    @property
    def block_table(self) -> bool:
        """Whether the blocks' first rows come from a table (a conv whose outputs differ in limbs)."""
        return self.p.kind == "conv" and not self.uniform

    @property
    def flash_bytes(self) -> int:
        tables = 0 if self.uniform else self.p.out_features
        tables += 4 * len(self.row_starts) if self.block_table else 0
        return self.rows.size + 4 * len(self.rows) + tables

    def describe(self) -> str:
        p, lay = self.p, self.layout
        what = (f"conv {p.in_shape[0]}->{p.out_features} 3x3 pad 1 on {p.in_shape[1]}x{p.in_shape[2]}"
                if p.kind == "conv" else f"linear {p.fan_in}->{p.out_features}")
        counts = sorted(set(self.limbs.tolist()))
        limbs = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        return (f"{p.name}: {what}, fan-in K = {p.fan_in}, |W| <= {p.max_abs_weight}; {limbs} limbs per "
                f"output ({len(self.rows)} rows of {lay.length} = {lay.segments} x {lay.seg_len} values); "
                f"limb sums |s| <= K * 255 * 128 = {p.fan_in * U8_MAX * ACT_BOUND} in int32_t; combined "
                f"|z| <= {self.partial_bound} in {self.z}")

    def weight_arrays(self) -> str:
        """The definitions of this layer's arrays in nitro_weights.c."""
        lay, p = self.layout, self.p
        segs = self.rows.reshape(-1, lay.seg_len).view(np.uint8)
        body = ",\n".join(f"    {_literal(seg.tobytes())}" for seg in segs)
        text = [f"/* {p.name}: {len(self.rows)} limb rows (output o's rows low limb first), each "
                f"{lay.segments} segment(s) of {lay.seg_len} bytes */\n"
                f"const uint8_t nitro_w_{self.id}[{len(segs)}][{lay.seg_len}] = {{\n{body}\n}};\n",
                _numbers(f"nitro_c_{self.id}", "int32_t", self.correction,
                         f"{p.name}: 128 * sum of each limb row (the uint8 shift's share of its dot "
                         "product)")]
        if not self.uniform:
            text.append(_numbers(f"nitro_n_{self.id}", "uint8_t", self.limbs, f"{p.name}: limbs per output"))
        if self.block_table:
            text.append(_numbers(f"nitro_r_{self.id}", "int32_t", self.row_starts,
                                 f"{p.name}: first limb row of each block of {self.block} outputs, then the "
                                 "end"))
        return "\n".join(text)

    def declarations(self) -> str:
        lay = self.layout
        decl = [f"extern const uint8_t nitro_w_{self.id}[{len(self.rows) * lay.segments}][{lay.seg_len}];",
                f"extern const int32_t nitro_c_{self.id}[{len(self.rows)}];"]
        if not self.uniform:
            decl.append(f"extern const uint8_t nitro_n_{self.id}[{self.p.out_features}];")
        if self.block_table:
            decl.append(f"extern const int32_t nitro_r_{self.id}[{len(self.row_starts)}];")
        return "\n".join(decl)


@dataclass(frozen=True)
class _Isa:
    """One compiled version of the layers: its suffix, the attribute that targets it, and the patch type its
    dot products vectorize best with (int16_t: SSE2/AVX2 pmaddwd; uint8_t: AVX-512 VNNI vpdpbusd)."""

    suffix: str
    attr: str
    guard: str
    patch: str

    @property
    def member(self) -> str:
        return "wide" if self.patch == "int16_t" else "narrow"


ISAS = (_Isa("generic", "", "", "int16_t"), _Isa("avx2", "NITRO_TARGET_AVX2 ", "NITRO_HAVE_AVX2", "int16_t"),
        _Isa("vnni", "NITRO_TARGET_VNNI ", "NITRO_HAVE_VNNI", "uint8_t"))

DISPATCH = """/* Versions of the layers for wider vector units, picked at run time (GCC on x86-64 only; define
 * NITRO_PORTABLE for the portable version alone, NITRO_ISA_MAX=0|1|2 to cap the choice at SSE2|AVX2|AVX-512
 * VNNI). Every version does the same exact integer arithmetic. */
#if !defined(NITRO_PORTABLE) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 9 && \\
    defined(__x86_64__)
#ifndef NITRO_ISA_MAX
#define NITRO_ISA_MAX 2
#endif
#if NITRO_ISA_MAX >= 1
#define NITRO_HAVE_AVX2 1
#define NITRO_TARGET_AVX2 __attribute__((target("avx2")))
#endif
#if NITRO_ISA_MAX >= 2
#define NITRO_HAVE_VNNI 1
#define NITRO_TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#endif
#endif
"""

WRAP32 = """/* compat int32_accumulation: the exact sum reduced modulo 2^32 into [-2^31, 2^31), as int32
 * hardware accumulates it (no implementation-defined conversion involved). */
static int64_t nitro_wrap32(int64_t z)
{
    int64_t m = (z + INT64_C(2147483648)) % INT64_C(4294967296);
    if (m < 0) m += INT64_C(4294967296);
    return m - INT64_C(2147483648);
}
"""

MAXPOOL = """/* Max-pool of shifted uint8 activations, kernel = stride (kh, kw), padding (ph, pw), floor mode,
 * channels last. Padding never wins the max unless pad_zero (compat head_pool_zero_padding: padding cells
 * hold the shifted 0 and compete); the shift keeps the order, so the max is the max of the int8 values. */
static void nitro_maxpool(const uint8_t *in, uint8_t *out, int32_t c, int32_t h, int32_t w, int32_t kh,
                          int32_t kw, int32_t ph, int32_t pw, int32_t pad_zero)
{
    int32_t oh = (h + 2 * ph - kh) / kh + 1, ow = (w + 2 * pw - kw) / kw + 1;
    int32_t oy, ox, ch, i, j;
    for (oy = 0; oy < oh; ++oy) {
        for (ox = 0; ox < ow; ++ox) {
            for (ch = 0; ch < c; ++ch) {
                int32_t best = -1; /* below every uint8 value */
                for (i = 0; i < kh; ++i) {
                    int32_t y = oy * kh + i - ph;
                    for (j = 0; j < kw; ++j) {
                        int32_t x = ox * kw + j - pw, v;
                        if (y < 0 || y >= h || x < 0 || x >= w) {
                            if (!pad_zero) continue;
                            v = 128;
                        } else {
                            v = in[(y * w + x) * c + ch];
                        }
                        if (v > best) best = v;
                    }
                }
                out[(oy * ow + ox) * c + ch] = (uint8_t)best;
            }
        }
    }
}
"""


def _scale_function(zt: str) -> str:
    if zt == "int32_t":
        return ("/* NITRO Scaling: clip(trunc(z / d), -127, 127); C99 division truncates toward zero. */\n"
                "static int32_t nitro_scale_int32(int32_t z, int32_t d)\n"
                "{\n"
                "    int32_t q = z / d;\n"
                "    return q > 127 ? 127 : (q < -127 ? -127 : q);\n"
                "}\n")
    return ("/* NITRO Scaling of an int64_t sum: clip(trunc(z / d), -127, 127). z is first clamped to\n"
            " * +-(128 d - 1), which changes no result (trunc((128 d - 1) / d) = 127) and brings it into\n"
            " * int32_t (128 d <= 2^31 for every fan-in up to 65,536): it divides in 32 bits. */\n"
            "static int32_t nitro_scale_int64(int64_t z, int32_t d)\n"
            "{\n"
            "    int64_t m = (int64_t)d * 128 - 1;\n"
            "    if (z > m) z = m;\n"
            "    else if (z < -m) z = -m;\n"
            "    return (int32_t)z / d;\n"
            "}\n")


def _relu_function(slope: int, correction: int) -> str:
    return (f"/* NITRO-ReLU, slope 1/{slope}: clip(q, 0, 127) + trunc(clip(q, -127, 0) / {slope}) - "
            f"{correction} (q is already in [-127, 127]), stored + 128 as uint8. */\n"
            f"static uint8_t nitro_relu_{slope}(int32_t q)\n"
            "{\n"
            "    int32_t pos = q > 0 ? q : 0, neg = q < 0 ? q : 0;\n"
            f"    return (uint8_t)(pos + neg / {slope} - {correction} + 128);\n"
            "}\n")


def _dots(la: _Layer, isa: _Isa, pixels: int, first: str, end: str, at: str = "", stride: int = 0) -> str:
    """Dot products of `pixels` patch rows (x0, x1, ...) with the limb rows r = first .. end - 1, each into
    acc[at + t * stride + r - first] (`at`: a C offset ending in '+', or empty)."""
    length = la.layout.length
    bound = la.p.fan_in * U8_MAX * ACT_BOUND
    names = [f"a{t}" for t in range(pixels)]
    load = "int16_t v = wr[i]; " if isa.patch == "int16_t" else ""
    factor = "v" if isa.patch == "int16_t" else "wr[i]"
    sums = " ".join(f"{a} += x{t}[i] * {factor};" for t, a in enumerate(names))
    row = "r" if first == "0" else f"r - {first}"
    stores = " ".join(f"acc[{at}{f'{t * stride} + ' if t else ''}{row}] = {a};" for t, a in enumerate(names))
    return (f"for (r = {first}; r < {end}; ++r) {{\n"
            f"    const int8_t *wr = w + r * {length};\n"
            f"    int32_t {', '.join(f'{a} = 0' for a in names)}; /* each |a| <= K * 255 * 128 = {bound} */\n"
            f"    for (i = 0; i < {length}; ++i) {{ {load}{sums} }}\n"
            f"    {stores}\n"
            "}")


def _indent(text: str, n: int) -> str:
    pad = " " * n
    return "\n".join(pad + line if line else line for line in text.splitlines())


def _store_function(la: _Layer, logits: bool) -> str:
    """The layer's outputs from one pixel's (or input's) raw limb sums a[r]: for each output o, z by Horner's
    rule from its exact limb sums, then Scaling (and NITRO-ReLU into the shifted uint8 of the next layer)."""
    p, zt = la.p, la.z
    count = f"nitro_n_{la.id}[o]" if not la.uniform else str(int(la.limbs[0]))
    z = "nitro_wrap32(z)" if p.needs_wrap else "z"
    value = f"nitro_scale_{zt[:-2]}({z}, {p.divisor})"
    sig, store = (("int32_t *out", f"out[o] = {value};") if logits else
                  ("uint8_t *out", f"out[o] = nitro_relu_{p.slope}({value});"))
    return f"""/* {p.name}: outputs o0 .. o1 - 1 from the raw sums a[r - r0] of their limb rows r = r0, ...
 * (output o's rows in turn, low limb first) */
static void nitro_{la.id}_out(const int32_t *a, {sig}, int32_t o0, int32_t o1, int32_t r0)
{{
    int32_t o, r, l;
    for (o = o0, r = 0; o < o1; r += {count}, ++o) {{
        {zt} z = 0; /* |z| <= {la.partial_bound} */
        for (l = {count} - 1; l >= 0; --l) /* limb sum s_l = a - 128 * (sum of its row): exact in int32_t */
            z = z * 256 + (a[r + l] - nitro_c_{la.id}[r0 + r + l]);
        {store}
    }}
}}
"""


def _patch_function(la: _Layer, patch: str) -> str:
    """The 3x3 patch of one output pixel in the layer's row layout, as `patch` values (int8 value + 128)."""
    p, lay = la.p, la.layout
    c, h, w = p.in_shape
    taps = lay.seg_data // c
    bits = "16" if patch == "int16_t" else "8"
    return f"""/* {p.name}: the 3x3 patch of pixel p, taps in (ky, kx) order, the shifted 0 outside the map */
static void nitro_{la.id}_patch{bits}(const uint8_t *in, {patch} *row, int32_t p)
{{
    int32_t y = p / {w}, x = p % {w}, tap, ch, i;
    for (tap = 0; tap < 9; ++tap) {{
        int32_t iy = y + tap / 3 - 1, ix = x + tap % 3 - 1;
        {patch} *dst = row + (tap / {taps}) * {lay.seg_len} + (tap % {taps}) * {c};
        if (iy < 0 || iy >= {h} || ix < 0 || ix >= {w}) {{
            for (ch = 0; ch < {c}; ++ch) dst[ch] = 128;
        }} else {{
            const uint8_t *src = in + (iy * {w} + ix) * {c};
            for (ch = 0; ch < {c}; ++ch) dst[ch] = src[ch];
        }}
    }}
    for (i = 0; i < {lay.segments}; ++i) /* segment padding, against zero weights */
        for (ch = {lay.seg_data}; ch < {lay.seg_len}; ++ch) row[i * {lay.seg_len} + ch] = 0;
}}
"""


def _conv_function(la: _Layer, isa: _Isa) -> str:
    p, lay = la.p, la.layout
    c, h, w = p.in_shape
    pixels, length, o = h * w, lay.length, p.out_features
    bits = "16" if isa.patch == "int16_t" else "8"
    pointers = ", ".join(f"*x{t} = tile + (p + {t}) * {length}" if t else f"*x0 = tile + p * {length}"
                         for t in range(PIXELS))
    if not la.block_table:
        limbs = int(la.limbs[0])
        rows = f"r0 = b * {la.block * limbs}; r1 = r0 + {la.block * limbs} < {len(la.rows)} ? r0 + " \
               f"{la.block * limbs} : {len(la.rows)};"
    else:
        rows = f"r0 = nitro_r_{la.id}[b]; r1 = nitro_r_{la.id}[b + 1];"
    stride = la.block_rows
    tail = "" if la.tile % PIXELS == 0 and pixels % la.tile % PIXELS == 0 else f"""\
            for (; p < n; ++p) {{ /* the tile's last pixels one at a time */
                const {isa.patch} *x0 = tile + p * {length};
{_indent(_dots(la, isa, 1, "r0", "r1", f"p * {stride} + "), 16)}
            }}
"""
    return f"""/* {la.describe()}
 * Tiles of {la.tile} pixels' patches; blocks of {la.block} outputs (at most {stride} limb rows) per pass. */
static {isa.attr}void nitro_{la.id}_{isa.suffix}(const uint8_t *in, uint8_t *out, nitro_scratch *s)
{{
    {isa.patch} *tile = s->tile.{isa.member};
    int32_t *acc = s->acc;
    const int8_t *w = (const int8_t *)(const void *)nitro_w_{la.id};
    int32_t p0, n, b, p, r, r0, r1, i;
    for (p0 = 0; p0 < {pixels}; p0 += {la.tile}) {{
        n = {pixels} - p0 < {la.tile} ? {pixels} - p0 : {la.tile};
        for (p = 0; p < n; ++p) nitro_{la.id}_patch{bits}(in, tile + p * {length}, p0 + p);
        for (b = 0; b < {la.blocks}; ++b) {{
            {rows}
            for (p = 0; p + {PIXELS} <= n; p += {PIXELS}) {{
                const {isa.patch} {pointers};
{_indent(_dots(la, isa, PIXELS, "r0", "r1", f"p * {stride} + ", stride), 16)}
            }}
{tail}            for (p = 0; p < n; ++p)
                nitro_{la.id}_out(acc + p * {stride}, out + (p0 + p) * {o}, b * {la.block},
                                  b * {la.block} + {la.block} < {o} ? b * {la.block} + {la.block} : {o}, r0);
        }}
    }}
}}
"""


def _linear_function(la: _Layer, isa: _Isa, logits: bool) -> str:
    p, lay = la.p, la.layout
    if lay.segments == 1:
        gather = f"for (i = 0; i < {p.fan_in}; ++i) x0[i] = in[i];"
    else:
        gather = (f"for (i = 0; i < {p.fan_in}; ++i) x0[(i / {lay.seg_data}) * {lay.seg_len} + i % "
                  f"{lay.seg_data}] = in[i];")
    out = "int32_t" if logits else "uint8_t"
    return f"""/* {la.describe()} */
static {isa.attr}void nitro_{la.id}_{isa.suffix}(const uint8_t *in, {out} *out, nitro_scratch *s)
{{
    {isa.patch} *x0 = s->tile.{isa.member};
    int32_t *acc = s->acc;
    const int8_t *w = (const int8_t *)(const void *)nitro_w_{la.id};
    int32_t r, i;
    for (i = 0; i < {lay.length}; ++i) x0[i] = 0; /* segment padding, against zero weights */
    {gather}
{_indent(_dots(la, isa, 1, "0", str(len(la.rows))), 4)}
    nitro_{la.id}_out(acc, out, 0, {p.out_features}, 0);
}}
"""


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape))


class CModel:
    """The C export of a plan: its layers' limb rows, its memory budget and its files."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.layers = {id(s): _Layer(s) for s in plan.steps if isinstance(s, Product)}
        self.head_layers = {id(hd): _Layer(hd.linear) for hd in plan.heads}
        every = [*self.layers.values(), *self.head_layers.values()]
        act, shape = _size(plan.in_shape), plan.in_shape
        for s in plan.steps:
            if isinstance(s, Product):
                shape = (s.out_features, *s.in_shape[1:]) if s.kind == "conv" else (s.out_features,)
            elif isinstance(s, Pool):
                shape = s.out_shape
            act = max(act, _size(shape))
        self.act = act
        self.tile = max(la.tile * la.layout.length for la in every)
        self.acc = max(la.tile * la.block_rows for la in every)
        self.head = max([_size(hd.pool.out_shape) for hd in plan.heads if hd.pool is not None], default=1)
        self.scratch_bytes = _round_up(4 * self.acc + 2 * self.tile + 2 * self.act + self.head, 4)
        self.weight_bytes = 256 * plan.in_shape[0] + sum(la.flash_bytes for la in every)

    def card(self) -> dict[str, Any]:
        """For the model card: what a microcontroller needs (flash for the weights, RAM for the scratch) and
        each layer's limbs and accumulators."""
        memory = {"flash_weight_bytes": self.weight_bytes, "ram_scratch_bytes": self.scratch_bytes,
                  "note": "flash: the const arrays of nitro_weights.c (limb rows, corrections, limb counts, "
                          "the normalizer table), code not included; RAM: nitro_scratch "
                          "(NITRO_SCRATCH_BYTES), the stack and the driver not included"}
        layers = {la.p.name: {"limbs_per_output": [int(la.limbs.min()), int(la.limbs.max())],
                              "limb_rows": len(la.rows), "row_values": la.layout.length,
                              "accumulator": la.z, "limb_sum_bound": la.p.fan_in * U8_MAX * ACT_BOUND,
                              "combination_bound": la.partial_bound} for la in self._every()}
        return {"memory": memory, "layers": layers}

    def files(self, banner: str) -> dict[str, str]:
        """{file name: text}. `banner` (provenance) is escaped with `comment_text`."""
        banner = comment_text(banner)
        return {HEADER: self._header(banner), WEIGHTS_HEADER: self._weights_header(banner),
                WEIGHTS: self._weights(banner), MODEL: self._model(banner), DRIVER_FILE: DRIVER}

    def _every(self) -> list[_Layer]:
        return [*self.layers.values(), *self.head_layers.values()]

    def _weights_header(self, banner: str) -> str:
        decls = "\n".join(la.declarations() for la in self._every())
        return (f"/* nitro_weights.h: {banner}\n * The data of the exported network, defined in "
                "nitro_weights.c. */\n#ifndef NITRO_WEIGHTS_H\n#define NITRO_WEIGHTS_H\n"
                "#include <stdint.h>\n\n"
                f"extern const uint8_t nitro_norm_table[{self.plan.table.size}];\n{decls}\n\n#endif\n")

    def _weights(self, banner: str) -> str:
        c = self.plan.in_shape[0]
        table = (self.plan.table.astype(np.int16) + SHIFT).astype(np.uint8)
        parts = [f"/* nitro_weights.c: {banner}\n * Weights as exact 8-bit limbs (int8 values in uint8 "
                 f"arrays, read as int8_t), {self.weight_bytes} bytes in all. */\n"
                 "#include \"nitro_weights.h\"\n",
                 _numbers("nitro_norm_table", "uint8_t", table, "input normalizer: int8 value + 128 of pixel "
                          f"byte b in channel c at [c * 256 + b] ({c} channels)")]
        parts += [la.weight_arrays() for la in self._every()]
        return "\n".join(parts)

    def _run_function(self, isa: _Isa) -> str:
        plan, classes = self.plan, self.plan.num_classes
        body = ["    nitro_normalize(image, a);"]
        head_at: dict[int, list] = {}
        for hd in plan.heads:
            head_at.setdefault(hd.after, []).append(hd)
        head_index = 0
        for i, s in enumerate(plan.steps):
            if isinstance(s, Product):
                name = f"nitro_{self.layers[id(s)].id}_{isa.suffix}"
                if i == len(plan.steps) - 1:
                    body.append(f"    {name}(a, logits, s);")
                    continue
                body.append(f"    {name}(a, b, s);\n    t = a; a = b; b = t;")
            elif isinstance(s, Pool):
                cc, hh, ww = s.in_shape
                body.append(f"    nitro_maxpool(a, b, {cc}, {hh}, {ww}, {s.kh}, {s.kw}, {s.ph}, {s.pw}, "
                            f"{int(s.pad_zero)});\n    t = a; a = b; b = t;")
            elif isinstance(s, FlattenStep):
                body.append("    /* flatten: a no-op, activations are stored in the order the next layer "
                            "reads */")
            for hd in head_at.get(i, []):
                name = f"nitro_{self.head_layers[id(hd)].id}_{isa.suffix}"
                dst = f"head_logits + {head_index * classes}"
                if hd.pool is not None:
                    cc, hh, ww = hd.pool.in_shape
                    g = hd.pool
                    body.append(f"    if (head_logits) {{\n        nitro_maxpool(a, s->head, {cc}, {hh}, "
                                f"{ww}, {g.kh}, {g.kw}, {g.ph}, {g.pw}, {int(g.pad_zero)});\n"
                                f"        {name}(s->head, {dst}, s);\n    }}")
                else:
                    body.append(f"    if (head_logits) {name}(a, {dst}, s);")
                head_index += 1
        swaps = any(not isinstance(s, FlattenStep) for s in plan.steps[:-1])
        locals_ = "    uint8_t *a = s->act[0], *b = s->act[1]" + (", *t;" if swaps else ";")
        unused = "" if plan.heads else "    (void)head_logits; /* exported without learning heads */\n"
        return (f"static {isa.attr}void nitro_run_{isa.suffix}(const uint8_t *image, int32_t *logits, "
                f"int32_t *head_logits, nitro_scratch *s)\n{{\n{locals_}\n{unused}" + "\n".join(body)
                + "\n}\n")

    def _normalize(self) -> str:
        c, h, w = self.plan.in_shape
        if self.plan.channels_last:
            loop = (f"    for (y = 0; y < {h}; ++y)\n        for (x = 0; x < {w}; ++x)\n"
                    f"            for (ch = 0; ch < {c}; ++ch)\n"
                    f"                a[(y * {w} + x) * {c} + ch] = "
                    f"nitro_norm_table[ch * 256 + image[(ch * {h} + y) * {w} + x]];\n")
            decl = "int32_t y, x, ch;"
        else:
            loop = (f"    for (ch = 0; ch < {c}; ++ch)\n        for (i = 0; i < {h * w}; ++i)\n"
                    f"            a[ch * {h * w} + i] = "
                    f"nitro_norm_table[ch * 256 + image[ch * {h * w} + i]];\n")
            decl = "int32_t ch, i;"
        order = "channels last" if self.plan.channels_last else "(c, h, w)"
        return (f"/* Input normalizer: raw pixel bytes ([C][H][W]) to the network's shifted input, {order}. "
                "*/\n"
                f"static void nitro_normalize(const uint8_t *image, uint8_t *a)\n{{\n    {decl}\n{loop}}}\n")

    def _model(self, banner: str) -> str:
        every = self._every()
        helpers = [self._normalize()]
        helpers += [_scale_function(zt) for zt in sorted({la.z for la in every})]
        if any(la.p.needs_wrap for la in every):
            helpers.append(WRAP32)
        helpers += [_relu_function(slope, corr) for slope, corr in
                    sorted({(la.p.slope, la.p.relu_correction) for la in every if la.p.slope is not None})]
        if any(isinstance(s, Pool) for s in self.plan.steps) or any(hd.pool for hd in self.plan.heads):
            helpers.append(MAXPOOL)
        last = self.plan.steps[-1]
        helpers += [_store_function(la, la.p is last or la in self.head_layers.values()) for la in every]
        convs = [la for la in every if la.p.kind == "conv"]
        helpers += [_patch_function(la, "int16_t") for la in convs]
        if convs:
            vnni = "\n".join(_patch_function(la, "uint8_t") for la in convs)
            helpers.append(f"#ifdef NITRO_HAVE_VNNI\n{vnni}#endif\n")
        versions = []
        for isa in ISAS:
            functions = []
            for i, s in enumerate(self.plan.steps):
                if isinstance(s, Product):
                    la = self.layers[id(s)]
                    functions.append(_conv_function(la, isa) if s.kind == "conv" else
                                     _linear_function(la, isa, i == len(self.plan.steps) - 1))
            functions += [_linear_function(self.head_layers[id(hd)], isa, True) for hd in self.plan.heads]
            functions.append(self._run_function(isa))
            text = f"/* ---- {isa.suffix} version ---- */\n" + "\n".join(functions)
            versions.append(f"#ifdef {isa.guard}\n{text}#endif /* {isa.guard} */\n" if isa.guard else text)
        classes = self.plan.num_classes
        return f"""/* nitro_model.c: {banner}
 * Integer-only forward pass: no floating point, no dynamic allocation. Layers:
{chr(10).join(' *   ' + la.describe() for la in every)}
 */
#include "nitro_model.h"
#include "nitro_weights.h"

{DISPATCH}
/* NITRO_SCRATCH_BYTES is sizeof(nitro_scratch) (its members are laid out widest first, without padding). */
typedef char nitro_scratch_bytes_check[sizeof(nitro_scratch) == NITRO_SCRATCH_BYTES ? 1 : -1];

{chr(10).join(helpers)}
{chr(10).join(versions)}
int nitro_forward(const uint8_t *image, int32_t *logits, int32_t *head_logits, nitro_scratch *scratch)
{{
    int32_t k, best = 0;
#ifdef NITRO_HAVE_AVX2
    __builtin_cpu_init();
#endif
#ifdef NITRO_HAVE_VNNI
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        nitro_run_vnni(image, logits, head_logits, scratch);
    else
#endif
#ifdef NITRO_HAVE_AVX2
    if (__builtin_cpu_supports("avx2"))
        nitro_run_avx2(image, logits, head_logits, scratch);
    else
#endif
        nitro_run_generic(image, logits, head_logits, scratch);
    for (k = 1; k < {classes}; ++k)
        if (logits[k] > logits[best]) best = k; /* first maximum, as nitro's argmax */
    return best;
}}

int nitro_predict(const uint8_t *image, int32_t *logits)
{{
    static nitro_scratch scratch;
    return nitro_forward(image, logits, 0, &scratch);
}}
"""

    def _header(self, banner: str) -> str:
        plan = self.plan
        c, h, w = plan.in_shape
        return f"""/* nitro_model.h: {banner}
 * Integer-only inference API (C99, no floating point, no dynamic allocation). */
#ifndef NITRO_MODEL_H
#define NITRO_MODEL_H
#include <stdint.h>

/* Input: raw uint8 pixels, channel planes one after the other ([C][H][W], as IDX and CIFAR-10 binary files
 * store them). */
#define NITRO_INPUT_CHANNELS {c}
#define NITRO_INPUT_HEIGHT {h}
#define NITRO_INPUT_WIDTH {w}
#define NITRO_INPUT_BYTES {c * h * w}
#define NITRO_NUM_CLASSES {plan.num_classes}
/* Learning heads in head_logits (0: exported without heads). */
#define NITRO_NUM_HEADS {len(plan.heads)}
/* Bytes of const data in nitro_weights.c (flash on a microcontroller). */
#define NITRO_WEIGHT_BYTES {self.weight_bytes}

/* The memory nitro_forward works in, NITRO_SCRATCH_BYTES bytes (RAM on a microcontroller): the int32 limb
 * sums of a tile of pixels, the patches (or the input row) the dot products read (int16_t for the SSE2
 * and AVX2 versions, uint8_t for AVX-512 VNNI), two activation buffers (int8 value + 128) and a head pool's
 * output. */
typedef struct nitro_scratch {{
    int32_t acc[{self.acc}];
    union {{
        int16_t wide[{self.tile}];
        uint8_t narrow[{self.tile}];
    }} tile;
    uint8_t act[2][{self.act}];
    uint8_t head[{self.head}];
}} nitro_scratch;
#define NITRO_SCRATCH_BYTES {self.scratch_bytes}

/* Predicts one image: writes NITRO_NUM_CLASSES logits (the output layer after Scaling, in [-127, 127], bit
 * for bit what `nitro eval` computes) and returns the predicted class (first maximum). Uses a static
 * nitro_scratch: not reentrant; use nitro_forward for that. */
int nitro_predict(const uint8_t *image, int32_t *logits);

/* The same with a caller-provided scratch. When head_logits is not NULL and the export has heads, it
 * receives NITRO_NUM_HEADS * NITRO_NUM_CLASSES head logits. */
int nitro_forward(const uint8_t *image, int32_t *logits, int32_t *head_logits, nitro_scratch *scratch);

#endif
"""


DRIVER = r"""/* main.c: scores an exported NITRO-D model on IDX (MNIST, FashionMNIST) or CIFAR-10 binary
 * test files.
 *
 *   cc -std=c99 -O2 -o nitro_eval main.c nitro_model.c nitro_weights.c
 *   ./nitro_eval idx t10k-images-idx3-ubyte t10k-labels-idx1-ubyte
 *   ./nitro_eval cifar test_batch.bin
 *   options, anywhere on the line: --limit N (the first N images, N >= 1), --logits (one line per image:
 *   label, prediction, the logits, then the learning heads' logits when exported with heads), --help;
 *   after "--" every argument is a file name
 *
 * Prints "accuracy CORRECT/TOTAL = P.PP%" (integer arithmetic only), and on stderr a progress line every
 * NITRO_PROGRESS_SECONDS seconds (10; set it with -DNITRO_PROGRESS_SECONDS=N). Exit code 0, or 2 on bad
 * arguments or input (with one "error:" line). */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include "nitro_model.h"

#ifndef NITRO_PROGRESS_SECONDS
#define NITRO_PROGRESS_SECONDS 10
#endif
#define USAGE "usage: %s [--limit N] [--logits] idx IMAGES LABELS | cifar BATCH.bin...\n"

static uint8_t image[NITRO_INPUT_BYTES];
static long long correct, total, limit = -1;
static int print_logits;
static time_t last_report;

static int fail(const char *what, const char *path)
{
    fprintf(stderr, "error: %s%s%s\n", what, path ? ": " : "", path ? path : "");
    return 2;
}

static int usage_error(const char *prog, const char *what, const char *arg)
{
    fail(what, arg);
    fprintf(stderr, USAGE, prog);
    return 2;
}

static int read_u32(FILE *f, unsigned long *v)
{
    unsigned char b[4];
    if (fread(b, 1, 4, f) != 4) return 0;
    *v = ((unsigned long)b[0] << 24) | ((unsigned long)b[1] << 16) | ((unsigned long)b[2] << 8) | b[3];
    return 1;
}

static void score(int label)
{
    static nitro_scratch scratch;
    static int32_t heads[NITRO_NUM_HEADS * NITRO_NUM_CLASSES + 1];
    int32_t logits[NITRO_NUM_CLASSES];
    int k, pred = nitro_forward(image, logits, print_logits ? heads : 0, &scratch);
    time_t now;
    if (print_logits) {
        printf("%d %d", label, pred);
        for (k = 0; k < NITRO_NUM_CLASSES; ++k) printf(" %ld", (long)logits[k]);
        for (k = 0; k < NITRO_NUM_HEADS * NITRO_NUM_CLASSES; ++k) printf(" %ld", (long)heads[k]);
        printf("\n");
    }
    correct += pred == label;
    total += 1;
    now = time(0);
    if (now != (time_t)-1 && now - last_report >= NITRO_PROGRESS_SECONDS) {
        fprintf(stderr, "nitro_eval: %lld images scored\n", total);
        last_report = now;
    }
}

static int run_idx(const char *images_path, const char *labels_path)
{
    FILE *fi = fopen(images_path, "rb"), *fl = fopen(labels_path, "rb");
    unsigned long magic, n, rows, cols, nl, i;
    int status = 0;
    if (!fi || !fl) {
        status = fail("cannot open", !fi ? images_path : labels_path);
        goto done;
    }
    if (!read_u32(fi, &magic) || magic != 2051UL || !read_u32(fi, &n) || !read_u32(fi, &rows) ||
        !read_u32(fi, &cols)) {
        status = fail("not an IDX image file (magic 2051)", images_path);
        goto done;
    }
    if (NITRO_INPUT_CHANNELS != 1 || rows != NITRO_INPUT_HEIGHT || cols != NITRO_INPUT_WIDTH) {
        status = fail("the images do not have the model's input shape", images_path);
        goto done;
    }
    if (!read_u32(fl, &magic) || magic != 2049UL || !read_u32(fl, &nl)) {
        status = fail("not an IDX label file (magic 2049)", labels_path);
        goto done;
    }
    if (nl < n) n = nl;
    for (i = 0; i < n && (limit < 0 || total < limit); ++i) {
        int label = fgetc(fl);
        if (label == EOF || fread(image, 1, NITRO_INPUT_BYTES, fi) != NITRO_INPUT_BYTES) {
            status = fail("file ends early", images_path);
            goto done;
        }
        score(label);
    }
done:
    if (fi) fclose(fi);
    if (fl) fclose(fl);
    return status;
}

static int run_cifar(const char *path)
{
    FILE *f = fopen(path, "rb");
    int label;
    if (!f) return fail("cannot open", path);
    if (NITRO_INPUT_CHANNELS != 3 || NITRO_INPUT_HEIGHT != 32 || NITRO_INPUT_WIDTH != 32) {
        fclose(f);
        return fail("the model does not take 3x32x32 CIFAR-10 images", path);
    }
    while ((limit < 0 || total < limit) && (label = fgetc(f)) != EOF) {
        if (fread(image, 1, NITRO_INPUT_BYTES, f) != NITRO_INPUT_BYTES) {
            fclose(f);
            return fail("truncated CIFAR-10 record", path);
        }
        score(label);
    }
    fclose(f);
    return 0;
}

/* A whole number of images, at least 1 (at most 10^12): digits only, no sign. */
static int parse_limit(const char *s, long long *out)
{
    long long v = 0;
    if (!*s) return 0;
    for (; *s; ++s) {
        if (*s < '0' || *s > '9' || v > 100000000000LL) return 0;
        v = v * 10 + (*s - '0');
    }
    if (v < 1) return 0;
    *out = v;
    return 1;
}

int main(int argc, char **argv)
{
    /* Options may come anywhere; the other arguments are moved, in order, to the front of argv + 1. */
    char **pos = argv + 1;
    const char *value;
    int i, npos = 0, options = 1, idx, status = 0;
    long long hundredths;
    for (i = 1; i < argc; ++i) {
        const char *arg = argv[i];
        if (!options || arg[0] != '-' || arg[1] == '\0') {
            pos[npos++] = argv[i];
        } else if (strcmp(arg, "--") == 0) {
            options = 0;
        } else if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            printf(USAGE, argv[0]);
            return 0;
        } else if (strcmp(arg, "--logits") == 0) {
            print_logits = 1;
        } else if (strcmp(arg, "--limit") == 0 || strncmp(arg, "--limit=", 8) == 0) {
            value = arg[7] == '=' ? arg + 8 : (i + 1 < argc ? argv[++i] : 0);
            if (!value) return usage_error(argv[0], "--limit needs a whole number of images", 0);
            if (!parse_limit(value, &limit))
                return usage_error(argv[0], "--limit needs a whole number of images, at least 1", value);
        } else {
            return usage_error(argv[0], "unknown option (use --limit N, --logits)", arg);
        }
    }
    if (npos == 0) return usage_error(argv[0], "missing the format (idx or cifar)", 0);
    idx = strcmp(pos[0], "idx") == 0;
    if (idx) {
        if (npos < 3) return usage_error(argv[0], "idx needs IMAGES and LABELS", 0);
        if (npos > 3) return usage_error(argv[0], "unexpected argument after idx IMAGES LABELS", pos[3]);
    } else if (strcmp(pos[0], "cifar") == 0) {
        if (npos < 2) return usage_error(argv[0], "cifar needs at least one BATCH.bin file", 0);
    } else {
        return usage_error(argv[0], "unknown format (idx or cifar)", pos[0]);
    }
    last_report = time(0);
    if (idx) {
        status = run_idx(pos[1], pos[2]);
    } else {
        for (i = 1; i < npos && status == 0; ++i) status = run_cifar(pos[i]);
    }
    if (status) return status;
    if (total == 0) return fail("no image scored", 0);
    hundredths = (correct * 10000 + total / 2) / total;
    printf("accuracy %lld/%lld = %lld.%02lld%%\n", correct, total, hundredths / 100, hundredths % 100);
    return 0;
}
"""
