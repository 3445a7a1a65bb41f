"""The plan as dependency-free C99: integer types only, no floating point, no dynamic allocation.

Files:
- `nitro_model.h`: the API (`nitro_predict`, `nitro_forward`), the input geometry and `NITRO_SCRATCH_BYTES`.
- `nitro_weights.h`: the normalizer table and every weight as a `static const` array of the narrowest
  integer type that holds it (int8_t, int16_t or int32_t); included by nitro_model.c only.
- `nitro_model.c`: the forward pass, one function per layer with its dimensions as constants.
- `main.c`: a driver that reads IDX (MNIST, FashionMNIST) or CIFAR-10 binary test files and prints the
  accuracy as an integer ratio (and, with --logits, every image's logits).

Everything else the writer emits is built here: identifiers from nitro's own layer names (`_ident`), numbers,
and one piece of free text, the banner, which goes into comments only and passes through `comment_text`.

Activations are int8 and channels last (h, w, c) as in nitro, so no weight needs permuting except the conv
weights, stored [out][ky][kx][in] to match the patch each output pixel reads. An MLP reads the image in
(c, h, w) order, as nitro flattens it.

Accumulators, chosen per layer from its actual weights: every partial sum of a product is bounded by
K * 128 * max|W| (K the fan-in, activations int8 with |x| <= 128). Where that bound is below 2^31 the layer
accumulates in int32_t (which compilers vectorize well), otherwise in int64_t, where it is below
2^(17 + 7 + 31) < 2^63 for any fan-in below 2^17 and any int32 weight; int64_t is C99. Sums are therefore
exact and never wrap. Under compat int32_accumulation the exact sum is reduced modulo 2^32 explicitly
(`nitro_wrap32`, emitted only where the bound allows a wrap), as the reference's int32 accumulators did.
C99 integer division truncates toward zero: the spec's trunc.
"""

from __future__ import annotations

import numpy as np

from ..errors import NitroError
from .plan import ACT_BOUND, INT32_MAX, FlattenStep, Plan, Pool, Product

MAX_FAN_IN = 2**17  # keeps int64 accumulators far from overflow (see the module docstring)
_VALUES_PER_LINE = 24
HEADER, WEIGHTS, MODEL, DRIVER_FILE = "nitro_model.h", "nitro_weights.h", "nitro_model.c", "main.c"
C_FILES = (HEADER, WEIGHTS, MODEL, DRIVER_FILE)
# Characters free text may keep in a comment: no '*' or '/' (no comment end or nested start), no '?' (no
# trigraph), no backslash (no line splice), no quote, no newline or control character.
_COMMENT_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ._,:;+-=()[]")
COMMENT_LIMIT = 300


def comment_text(text: str) -> str:
    """`text` as it may appear inside a generated comment: every other character becomes '_', and it is
    cut to COMMENT_LIMIT characters. The one escaping step for free text in the C export (why: a checkpoint
    file name or a future label must never end a comment and become code)."""
    safe = "".join(ch if ch in _COMMENT_SAFE else "_" for ch in text)
    return safe if len(safe) <= COMMENT_LIMIT else safe[:COMMENT_LIMIT - 3] + "..."


def _ctype(a: np.ndarray) -> str:
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    for bits in (8, 16, 32):
        if -(2 ** (bits - 1)) <= lo and hi < 2 ** (bits - 1):
            return f"int{bits}_t"
    raise NitroError(f"weights in [{lo}, {hi}] do not fit int32")


def _array(name: str, ctype: str, values: np.ndarray, comment: str) -> str:
    flat = values.reshape(-1).astype(np.int64).tolist()
    lines = [", ".join(map(str, flat[i:i + _VALUES_PER_LINE])) for i in range(0, len(flat), _VALUES_PER_LINE)]
    body = ",\n    ".join(lines)
    return f"/* {comment} */\nstatic const {ctype} {name}[{len(flat)}] = {{\n    {body}\n}};\n"


def _ident(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


class _Layer:
    """A product's C names and types."""

    def __init__(self, p: Product, prefix: str) -> None:
        if p.fan_in >= MAX_FAN_IN:
            raise NitroError(f"{p.name}: fan-in {p.fan_in} is too large for the C export (at most "
                             f"{MAX_FAN_IN - 1})")
        self.p = p
        self.func = f"nitro_{prefix}{_ident(p.name)}"
        self.weights = f"nitro_w_{prefix}{_ident(p.name)}"
        w = p.weight
        self.stored = np.ascontiguousarray(w.transpose(0, 2, 3, 1)) if p.kind == "conv" else w
        self.wtype = _ctype(self.stored)
        self.acc = "int32_t" if p.sum_bound <= INT32_MAX else "int64_t"
        self.dot = f"nitro_dot_{self.wtype[:-2]}_{self.acc[:-2]}"

    def describe(self) -> str:
        p = self.p
        what = (f"conv {p.in_shape[0]}->{p.out_features} 3x3 pad 1 on {p.in_shape[1]}x{p.in_shape[2]}"
                if p.kind == "conv" else f"linear {p.fan_in}->{p.out_features}")
        return (f"{p.name}: {what}, fan-in {p.fan_in}, |W| <= {p.max_abs_weight}, |sum| <= {p.fan_in} * "
                f"{ACT_BOUND} * {p.max_abs_weight} = {p.sum_bound}: {self.acc} accumulator")

    def value(self) -> str:
        """The C expression of the scaled int8 value (z in a variable named z)."""
        z = "nitro_wrap32(z)" if self.p.needs_wrap else "z"
        return f"nitro_scale_{self.acc[:-2]}({z}, {self.p.divisor})"


def _dot_function(wtype: str, acc: str) -> str:
    return (f"static {acc} nitro_dot_{wtype[:-2]}_{acc[:-2]}(const int8_t *x, const {wtype} *w, int32_t n)\n"
            "{\n"
            f"    {acc} acc = 0;\n"
            "    int32_t i;\n"
            f"    for (i = 0; i < n; ++i) acc += ({acc})x[i] * w[i];\n"
            "    return acc;\n"
            "}\n")


def _scale_function(acc: str) -> str:
    return (f"/* NITRO Scaling: clip(trunc(z / d), -127, 127); C99 division truncates toward zero. */\n"
            f"static int8_t nitro_scale_{acc[:-2]}({acc} z, {acc} d)\n"
            "{\n"
            f"    {acc} q = z / d;\n"
            "    return (int8_t)(q > 127 ? 127 : (q < -127 ? -127 : q));\n"
            "}\n")


WRAP32 = """/* compat int32_accumulation: the exact sum reduced modulo 2^32 into [-2^31, 2^31), as int32
 * hardware accumulates it (no implementation-defined conversion involved). */
static int64_t nitro_wrap32(int64_t z)
{
    int64_t m = (z + INT64_C(2147483648)) % INT64_C(4294967296);
    if (m < 0) m += INT64_C(4294967296);
    return m - INT64_C(2147483648);
}
"""

MAXPOOL = """/* Max-pool, kernel = stride (kh, kw), padding (ph, pw), floor mode, channels last. Padding never
 * wins the max unless pad_zero (compat head_pool_zero_padding: padding cells hold 0 and compete). */
static void nitro_maxpool(const int8_t *in, int8_t *out, int32_t c, int32_t h, int32_t w, int32_t kh,
                          int32_t kw, int32_t ph, int32_t pw, int32_t pad_zero)
{
    int32_t oh = (h + 2 * ph - kh) / kh + 1, ow = (w + 2 * pw - kw) / kw + 1;
    int32_t oy, ox, ch, i, j;
    for (oy = 0; oy < oh; ++oy) {
        for (ox = 0; ox < ow; ++ox) {
            for (ch = 0; ch < c; ++ch) {
                int32_t best = -129; /* below every int8 value */
                for (i = 0; i < kh; ++i) {
                    int32_t y = oy * kh + i - ph;
                    for (j = 0; j < kw; ++j) {
                        int32_t x = ox * kw + j - pw, v;
                        if (y < 0 || y >= h || x < 0 || x >= w) {
                            if (!pad_zero) continue;
                            v = 0;
                        } else {
                            v = in[(y * w + x) * c + ch];
                        }
                        if (v > best) best = v;
                    }
                }
                out[(oy * ow + ox) * c + ch] = (int8_t)best;
            }
        }
    }
}
"""


def _relu_function(slope: int, correction: int) -> str:
    return (f"/* NITRO-ReLU, slope 1/{slope}: clip(q, 0, 127) + trunc(clip(q, -127, 0) / {slope}) "
            f"- {correction} (q is already in [-127, 127]). */\n"
            f"static int8_t nitro_relu_{slope}(int8_t q)\n"
            "{\n"
            "    int32_t pos = q > 0 ? q : 0, neg = q < 0 ? q : 0;\n"
            f"    return (int8_t)(pos + neg / {slope} - {correction});\n"
            "}\n")


def _conv_function(layer: _Layer) -> str:
    p = layer.p
    c, h, w = p.in_shape
    o, k = p.out_features, p.fan_in
    return f"""/* {layer.describe()} */
static void {layer.func}(const int8_t *in, int8_t *out, int8_t *patch)
{{
    int32_t oy, ox, ky, kx, ch, o;
    for (oy = 0; oy < {h}; ++oy) {{
        for (ox = 0; ox < {w}; ++ox) {{
            int8_t *p = patch;
            for (ky = 0; ky < 3; ++ky) {{
                int32_t iy = oy + ky - 1;
                for (kx = 0; kx < 3; ++kx) {{
                    int32_t ix = ox + kx - 1;
                    if (iy < 0 || iy >= {h} || ix < 0 || ix >= {w}) {{
                        for (ch = 0; ch < {c}; ++ch) p[ch] = 0;
                    }} else {{
                        const int8_t *src = in + (iy * {w} + ix) * {c};
                        for (ch = 0; ch < {c}; ++ch) p[ch] = src[ch];
                    }}
                    p += {c};
                }}
            }}
            for (o = 0; o < {o}; ++o) {{
                {layer.acc} z = {layer.dot}(patch, {layer.weights} + o * {k}, {k});
                out[(oy * {w} + ox) * {o} + o] = nitro_relu_{p.slope}({layer.value()});
            }}
        }}
    }}
}}
"""


def _linear_function(layer: _Layer, logits: bool) -> str:
    p = layer.p
    o, k = p.out_features, p.fan_in
    if logits:
        sig, store = "const int8_t *in, int32_t *out", f"out[o] = (int32_t){layer.value()};"
    else:
        sig, store = "const int8_t *in, int8_t *out", f"out[o] = nitro_relu_{p.slope}({layer.value()});"
    return f"""/* {layer.describe()} */
static void {layer.func}({sig})
{{
    int32_t o;
    for (o = 0; o < {o}; ++o) {{
        {layer.acc} z = {layer.dot}(in, {layer.weights} + o * {k}, {k});
        {store}
    }}
}}
"""


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape))


def build_c(plan: Plan, *, banner: str) -> dict[str, str]:
    """The C sources of `plan`: {file name: text}. `banner` (provenance) is escaped with `comment_text`."""
    banner = comment_text(banner)
    c, h, w = plan.in_shape
    classes = plan.num_classes
    layers = {id(s): _Layer(s, "") for s in plan.steps if isinstance(s, Product)}
    head_layers = {id(hd): _Layer(hd.linear, "") for hd in plan.heads}
    all_layers = [*layers.values(), *head_layers.values()]

    # Scratch: two ping-pong activation buffers, the conv patch, the head pool output.
    act = _size(plan.in_shape)
    shape: tuple[int, ...] = plan.in_shape
    for s in plan.steps:
        if isinstance(s, Product):
            shape = (s.out_features, *s.in_shape[1:]) if s.kind == "conv" else (s.out_features,)
        elif isinstance(s, Pool):
            shape = s.out_shape
        act = max(act, _size(shape))
    patch = max([9 * s.in_shape[0] for s in plan.steps if isinstance(s, Product) and s.kind == "conv"],
                default=0)
    head_pool = max([_size(hd.pool.out_shape) for hd in plan.heads if hd.pool is not None], default=0)
    scratch = 2 * act + patch + head_pool

    # Weights header.
    weights = [f"/* nitro_weights.h: {banner}\n * Weights of the exported network as static const integer "
               "arrays; included by nitro_model.c only. */\n"
               "#ifndef NITRO_WEIGHTS_H\n#define NITRO_WEIGHTS_H\n#include <stdint.h>\n",
               _array("nitro_norm_table", "int8_t", plan.table, "input normalizer: int8 value of pixel "
                      f"byte b in channel c at [c * 256 + b] ({c} channels)")]
    for layer in all_layers:
        order = "[out][ky][kx][in]" if layer.p.kind == "conv" else "[out][in]"
        weights.append(_array(layer.weights, layer.wtype, layer.stored, f"{layer.p.name}: {order}, "
                              f"{layer.stored.shape}"))
    weights.append("#endif\n")

    # Helpers, only those used (unused static functions would be warnings).
    helpers = []
    for wtype, acc in sorted({(la.wtype, la.acc) for la in all_layers}):
        helpers.append(_dot_function(wtype, acc))
    for acc in sorted({la.acc for la in all_layers}):
        helpers.append(_scale_function(acc))
    if any(la.p.needs_wrap for la in all_layers):
        helpers.append(WRAP32)
    for slope, correction in sorted({(la.p.slope, la.p.relu_correction) for la in all_layers
                                     if la.p.slope is not None}):
        helpers.append(_relu_function(slope, correction))
    if any(isinstance(s, Pool) for s in plan.steps) or any(hd.pool is not None for hd in plan.heads):
        helpers.append(MAXPOOL)

    functions = []
    for i, s in enumerate(plan.steps):
        if isinstance(s, Product):
            la = layers[id(s)]
            last = i == len(plan.steps) - 1
            functions.append(_conv_function(la) if s.kind == "conv" else _linear_function(la, last))
    for hd in plan.heads:
        functions.append(_linear_function(head_layers[id(hd)], True))

    if plan.channels_last:
        normalize = (f"    for (y = 0; y < {h}; ++y)\n        for (x = 0; x < {w}; ++x)\n"
                     f"            for (ch = 0; ch < {c}; ++ch)\n"
                     f"                a[(y * {w} + x) * {c} + ch] = "
                     f"nitro_norm_table[ch * 256 + image[(ch * {h} + y) * {w} + x]];\n")
        norm_vars = "int32_t y, x, ch;"
    else:
        normalize = (f"    for (ch = 0; ch < {c}; ++ch)\n        for (i = 0; i < {h * w}; ++i)\n"
                     f"            a[ch * {h * w} + i] = "
                     f"nitro_norm_table[ch * 256 + image[ch * {h * w} + i]];\n")
        norm_vars = "int32_t ch, i;"

    body = []
    head_at: dict[int, list] = {}
    for hd in plan.heads:
        head_at.setdefault(hd.after, []).append(hd)
    head_index = 0
    for i, s in enumerate(plan.steps):
        last = i == len(plan.steps) - 1
        if isinstance(s, Product):
            la = layers[id(s)]
            if last:
                body.append(f"    {la.func}(a, logits);")
                continue
            extra = ", patch" if s.kind == "conv" else ""
            body.append(f"    {la.func}(a, b{extra});\n    t = a; a = b; b = t;")
        elif isinstance(s, Pool):
            cc, hh, ww = s.in_shape
            body.append(f"    nitro_maxpool(a, b, {cc}, {hh}, {ww}, {s.kh}, {s.kw}, {s.ph}, {s.pw}, "
                        f"{int(s.pad_zero)});\n    t = a; a = b; b = t;")
        elif isinstance(s, FlattenStep):
            body.append("    /* flatten: a no-op, activations are stored in the order the next layer "
                        "reads */")
        for hd in head_at.get(i, []):
            hl = head_layers[id(hd)]
            dst = f"head_logits + {head_index * classes}"
            if hd.pool is not None:
                cc, hh, ww = hd.pool.in_shape
                g = hd.pool
                body.append(f"    if (head_logits) {{\n        nitro_maxpool(a, headbuf, {cc}, {hh}, {ww}, "
                            f"{g.kh}, {g.kw}, {g.ph}, {g.pw}, {int(g.pad_zero)});\n"
                            f"        {hl.func}(headbuf, {dst});\n    }}")
            else:
                body.append(f"    if (head_logits) {hl.func}(a, {dst});")
            head_index += 1
    uses_patch = any(isinstance(s, Product) and s.kind == "conv" for s in plan.steps)
    uses_t = any(not isinstance(s, FlattenStep) for s in plan.steps[:-1])
    locals_ = [f"    int8_t *a = scratch, *b = scratch + {act};"]
    if uses_t:
        locals_.append("    int8_t *t;")
    if uses_patch:
        locals_.append(f"    int8_t *patch = scratch + {2 * act};")
    if any(hd.pool is not None for hd in plan.heads):
        locals_.append(f"    int8_t *headbuf = scratch + {2 * act + patch};")
    locals_.append(f"    int32_t k, best = 0;\n    {norm_vars}")
    unused = "" if plan.heads else "    (void)head_logits; /* exported without learning heads */\n"

    model_c = f"""/* nitro_model.c: {banner}
 * Integer-only forward pass: no floating point, no dynamic allocation. Layers:
{chr(10).join(' *   ' + la.describe() for la in all_layers)}
 */
#include "nitro_model.h"
#include "nitro_weights.h"

{chr(10).join(helpers)}
{chr(10).join(functions)}
int nitro_forward(const uint8_t *image, int32_t *logits, int32_t *head_logits, int8_t *scratch)
{{
{chr(10).join(locals_)}
{unused}    /* input normalizer: raw pixel bytes to the network's int8 input */
{normalize}{chr(10).join(body)}
    for (k = 1; k < {classes}; ++k)
        if (logits[k] > logits[best]) best = k; /* first maximum, as nitro's argmax */
    return best;
}}

int nitro_predict(const uint8_t *image, int32_t *logits)
{{
    static int8_t scratch[NITRO_SCRATCH_BYTES];
    return nitro_forward(image, logits, 0, scratch);
}}
"""
    header = f"""/* nitro_model.h: {banner}
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
#define NITRO_NUM_CLASSES {classes}
/* Learning heads in head_logits (0: exported without heads). */
#define NITRO_NUM_HEADS {len(plan.heads)}
/* Bytes of scratch memory nitro_forward needs: two int8 activation buffers of {act} bytes, the conv patch
 * ({patch} bytes) and the head pool output ({head_pool} bytes). */
#define NITRO_SCRATCH_BYTES {scratch}

/* Predicts one image: writes NITRO_NUM_CLASSES logits (the output layer after Scaling, in [-127, 127], bit
 * for bit what `nitro eval` computes) and returns the predicted class (first maximum). Uses a static
 * scratch buffer of NITRO_SCRATCH_BYTES bytes: not reentrant; use nitro_forward for that. */
int nitro_predict(const uint8_t *image, int32_t *logits);

/* The same with a caller-provided scratch buffer of NITRO_SCRATCH_BYTES bytes. When head_logits is not
 * NULL and the export has heads, it receives NITRO_NUM_HEADS * NITRO_NUM_CLASSES head logits. */
int nitro_forward(const uint8_t *image, int32_t *logits, int32_t *head_logits, int8_t *scratch);

#endif
"""
    return {HEADER: header, WEIGHTS: "\n".join(weights), MODEL: model_c, DRIVER_FILE: DRIVER}


DRIVER = r"""/* main.c: scores an exported NITRO-D model on IDX (MNIST, FashionMNIST) or CIFAR-10 binary
 * test files.
 *
 *   cc -std=c99 -O2 -o nitro_eval main.c nitro_model.c
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
    static int8_t scratch[NITRO_SCRATCH_BYTES];
    static int32_t heads[NITRO_NUM_HEADS * NITRO_NUM_CLASSES + 1];
    int32_t logits[NITRO_NUM_CLASSES];
    int k, pred = nitro_forward(image, logits, print_logits ? heads : 0, scratch);
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
