"""CPU check of the GPU recurrent kernels' source (mpinet/kernels/recurrent.py).

No GPU is needed: the ElementwiseKernel bodies are plain C statements (declarations, loads,
stores into raw arrays at computed offsets), so this test translates them line by line into
NumPy, runs them over all N*H thread indices at once in float64, and compares every output with
the CPU reference cells (mpinet.ops.recurrent). It catches wrong offsets, gate orders and
formulas in the kernels. A second check compiles each kernel with the host C++ compiler (g++,
-fsyntax-only) the way CuPy wraps it: the type placeholders as typedefs for each dtype
combination the wrappers use (float32, float64, float16, bfloat16 as unsigned short), raw
parameters as indexable arrays, the others as elements. It catches C++ errors (types, names,
overloads of the shared header) before a GPU ever sees the code; CUDA-only details still need
the GPU tests in test_recurrent_gpu.py.
"""
import re
import shutil
import subprocess

import numpy as np
import pytest

from mpinet.kernels import _compile
from mpinet.kernels import recurrent as kernels
from mpinet.ops import recurrent as rec


def _split_top_level(text: str, sep: str) -> list:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "([" and 1 or 0
        depth -= ch in ")]" and 1 or 0
        if ch == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current]


def _expr(c: str, integer: bool = False) -> str:
    """One C expression of the kernels as Python/NumPy."""
    c = c.replace("rec_sigmoid<A>(", "_sigmoid(").replace("mpn_ld<A>(", "(")
    c = re.sub(r"\bA\((\d+)\)", r"\1.0", c)
    c = re.sub(r"\btanh\(", "np.tanh(", c)
    c = re.sub(r"\bexp\(", "np.exp(", c)
    ternary = re.fullmatch(r"\s*(\w+) \? (.+) : (.+)", c)
    if ternary:
        c = f"(({ternary[2]}) if {ternary[1]} else ({ternary[3]}))"
    return c.replace(" / ", " // ") if integer else c


def translate(body: str) -> str:
    lines = []
    for stmt in _split_top_level(body.replace("\n", " "), ";"):
        stmt = stmt.strip()
        if not stmt or stmt.startswith("typedef"):
            continue
        decl = re.fullmatch(r"const (ptrdiff_t|A) (.+)", stmt)
        if decl:
            for part in _split_top_level(decl[2], ","):
                name, value = part.split("=", 1)
                lines.append(f"{name.strip()} = {_expr(value, decl[1] == 'ptrdiff_t')}")
            continue
        put = re.fullmatch(r"mpn_put\((.+)\)", stmt)
        if put:
            target, value = _split_top_level(put[1], ",")
            lines.append(f"{target.strip()} = {_expr(value)}")
            continue
        target, value = stmt.split("=", 1)
        lines.append(f"{target.strip()} = {_expr(value)}")
    return "\n".join(lines)


def run_body(body: str, elements: dict, raws: dict, scalars: dict, outputs: list) -> dict:
    """Run a kernel body over every thread index i at once (non-raw arrays elementwise)."""
    size = next(iter(elements.values())).size
    namespace = {"np": np, "i": np.arange(size), "_sigmoid": lambda x: 1 / (1 + np.exp(-x))}
    namespace.update({k: v.ravel() for k, v in elements.items()})
    namespace.update({k: v.reshape(-1) for k, v in raws.items()})  # views: raw outputs fill in
    namespace.update(scalars)
    exec(translate(body), namespace)  # our own kernel source, translated to NumPy
    return {k: namespace[k] for k in outputs}


@pytest.mark.parametrize("masked", [False, True])
def test_lstm_kernel_source_matches_the_reference(masked):
    rng = np.random.default_rng(0)
    n, hidden = 3, 5
    gx, gh = rng.standard_normal((n, 4 * hidden)) * 2, rng.standard_normal((n, 4 * hidden))
    c_prev, h_prev = rng.standard_normal((n, hidden)), rng.standard_normal((n, hidden))
    mask = np.array([[1.0], [0.0], [1.0]]) if masked else None
    h, c, out, (i, f, g, o, tc, _) = rec.lstm_cell_reference(gx, gh, c_prev, h_prev, mask)

    acts = np.zeros((n, 4 * hidden))
    got = run_body(kernels.KERNELS["lstm_cell_fwd"][2],
                   {"c_prev": c_prev, "h_prev": h_prev},
                   {"gx": gx, "gh": gh, "mask": mask if masked else np.zeros(1), "acts": acts},
                   {"H": hidden, "has_mask": masked}, ["h", "c", "out", "tc"])
    for name, want in (("h", h), ("c", c), ("out", out), ("tc", tc)):
        np.testing.assert_allclose(got[name].reshape(n, hidden), want, rtol=1e-12, err_msg=name)
    np.testing.assert_allclose(acts, np.concatenate([i, f, g, o], axis=1), rtol=1e-12)

    g_h, g_c, g_out = (rng.standard_normal((n, hidden)) for _ in range(3))
    saved = (i, f, g, o, tc, c_prev)
    dg, dc_prev, dh_carry = rec.lstm_cell_backward_reference(saved, mask, g_h, g_c, g_out)
    dg_got = np.zeros((n, 4 * hidden))
    got = run_body(kernels.KERNELS["lstm_cell_bwd"][2],
                   {"tc": tc, "c_prev": c_prev, "gh": g_h, "gc": g_c, "gout": g_out},
                   {"acts": acts, "mask": mask if masked else np.zeros(1), "dg": dg_got},
                   {"H": hidden, "has_mask": masked}, ["dc_prev", "dh_carry"])
    np.testing.assert_allclose(dg_got, dg, rtol=1e-12)
    np.testing.assert_allclose(got["dc_prev"].reshape(n, hidden), dc_prev, rtol=1e-12)
    want_carry = dh_carry if masked else np.zeros((n, hidden))
    np.testing.assert_allclose(got["dh_carry"].reshape(n, hidden), want_carry, atol=1e-15)


@pytest.mark.parametrize("masked", [False, True])
def test_gru_kernel_source_matches_the_reference(masked):
    rng = np.random.default_rng(1)
    n, hidden = 4, 3
    gx, gh = rng.standard_normal((n, 3 * hidden)) * 2, rng.standard_normal((n, 3 * hidden))
    h_prev = rng.standard_normal((n, hidden))
    mask = np.array([[1.0], [0.0], [1.0], [0.0]]) if masked else None
    h, out, (r, z, nn_, ghn, _) = rec.gru_cell_reference(gx, gh, h_prev, mask)

    acts = np.zeros((n, 4 * hidden))
    got = run_body(kernels.KERNELS["gru_cell_fwd"][2], {"h_prev": h_prev},
                   {"gx": gx, "gh": gh, "mask": mask if masked else np.zeros(1), "acts": acts},
                   {"H": hidden, "has_mask": masked}, ["h", "out"])
    np.testing.assert_allclose(got["h"].reshape(n, hidden), h, rtol=1e-12)
    np.testing.assert_allclose(got["out"].reshape(n, hidden), out, rtol=1e-12)
    np.testing.assert_allclose(acts, np.concatenate([r, z, nn_, ghn], axis=1), rtol=1e-12)

    g_state, g_out = rng.standard_normal((n, hidden)), rng.standard_normal((n, hidden))
    dgx, dgh, dh_prev = rec.gru_cell_backward_reference((r, z, nn_, ghn, h_prev), mask,
                                                        g_state, g_out)
    dgx_got, dgh_got = np.zeros((n, 3 * hidden)), np.zeros((n, 3 * hidden))
    got = run_body(kernels.KERNELS["gru_cell_bwd"][2],
                   {"h_prev": h_prev, "gh_state": g_state, "gout": g_out},
                   {"acts": acts, "mask": mask if masked else np.zeros(1), "dgx": dgx_got,
                    "dgh": dgh_got}, {"H": hidden, "has_mask": masked}, ["dh_prev"])
    np.testing.assert_allclose(dgx_got, dgx, rtol=1e-12)
    np.testing.assert_allclose(dgh_got, dgh, rtol=1e-12)
    np.testing.assert_allclose(got["dh_prev"].reshape(n, hidden), dh_prev, rtol=1e-12)


def test_the_translation_would_notice_a_wrong_offset():
    """The check can fail: a kernel reading the f gate at the i gate's offset differs."""
    broken = kernels.KERNELS["lstm_cell_fwd"][2].replace("gx[row + H + j]", "gx[row + j]")
    rng = np.random.default_rng(2)
    gx, gh = rng.standard_normal((2, 8)), rng.standard_normal((2, 8))
    c_prev = h_prev = rng.standard_normal((2, 2))
    want = rec.lstm_cell_reference(gx, gh, c_prev, h_prev, None)[1]
    got = run_body(broken, {"c_prev": c_prev, "h_prev": h_prev},
                   {"gx": gx, "gh": gh, "mask": np.zeros(1), "acts": np.zeros((2, 8))},
                   {"H": 2, "has_mask": False}, ["c"])["c"]
    assert not np.allclose(got.reshape(2, 2), want)


# Host stand-ins for what CUDA and CuPy provide to an ElementwiseKernel.
_HOST_PRELUDE = r"""
#include <cmath>
#include <cstddef>
#include <cstring>
#define __device__
#define __forceinline__ inline
using std::exp; using std::tanh;
inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
struct float16 { float v; float16() : v(0) {} explicit float16(float x) : v(x) {}
                 operator float() const { return v; } };
template <typename T> struct CArray { T* p; T& operator[](ptrdiff_t i) const { return p[i]; } };
"""

# (io type of the data arrays, type of the mask, type of the saved activations): bfloat16
# travels as unsigned short; masks and saved values are float32 or float64.
_COMBINATIONS = [("float", "float", "float"), ("double", "double", "double"),
                 ("float16", "float", "float"), ("unsigned short", "float", "float")]


def _host_source() -> str:
    parts = [_HOST_PRELUDE, kernels.PREAMBLE]
    for number, (io, mask, saved) in enumerate(_COMBINATIONS):
        types = {"G": io, "C": io, "M": mask, "S": saved}
        for name, (ins, outs, body) in kernels.KERNELS.items():
            params = ["ptrdiff_t i"]
            for is_output, declaration in ((False, ins), (True, outs)):
                for param in declaration.split(","):
                    words = param.split()
                    raw = words[0] == "raw"
                    kind, pname = words[-2], words[-1]
                    ctype = "int" if kind == "int32" else kind
                    if raw:
                        params.append(f"CArray<{ctype}> {pname}")
                    elif is_output:
                        params.append(f"{ctype}& {pname}")
                    else:
                        params.append(f"const {ctype} {pname}")
            typedefs = " ".join(f"typedef {t} {k};" for k, t in types.items())
            parts.append(f"namespace k{number} {{ {typedefs}\n"
                         f"void {name}({', '.join(params)}) {{\n{body}\n}} }}\n")
    return "\n".join(parts)


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a host C++ compiler (g++)")
def test_kernel_sources_compile_as_cupy_wraps_them(tmp_path):
    source = tmp_path / "recurrent_kernels.cpp"
    source.write_text(_host_source())
    run = subprocess.run(["g++", "-std=c++14", "-fsyntax-only", "-Wall", "-Werror",
                          "-Wno-unused-variable", str(source)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a host C++ compiler (g++)")
def test_the_compile_check_would_notice_a_typo(tmp_path):
    broken = dict(kernels.KERNELS)
    ins, outs, body = broken["gru_cell_bwd"]
    broken["gru_cell_bwd"] = (ins, outs, body.replace("mpn_ld<A>(h_prev)", "mpn_ld<A>(h_prv)"))
    source = tmp_path / "broken.cpp"
    original = kernels.KERNELS
    kernels.KERNELS = broken
    try:
        source.write_text(_host_source())
    finally:
        kernels.KERNELS = original
    run = subprocess.run(["g++", "-std=c++14", "-fsyntax-only", str(source)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "h_prv" in run.stderr
    assert _compile.ELEMENTWISE_PREAMBLE in kernels.PREAMBLE  # the shared header is checked too
