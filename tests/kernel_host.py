"""Run a fused GPU kernel's CUDA body on the host, to check that it computes what its NumPy reference does.

The CuPy stand-in runs each kernel's NumPy reference in the kernel's place, and tools/compile_kernels.py
compiles the CUDA sources without running them. Here the CUDA body itself runs: g++ compiles it inside a
loop that does what CuPy's templates do one index at a time. For an ElementwiseKernel, for each loop index
``i`` the non-raw arguments are bound by reference to their element (broadcast to the loop's shape first),
raw ones are plain pointers (a C-contiguous CArray indexes them the same way), scalars are constants of
their parameter's type, and ``_ind.size()`` is the loop size. For a ReductionKernel over axis 1 of (C, M)
inputs, each output index folds ``map_expr`` over the M values with ``reduce_expr`` from ``identity`` and
then runs ``post_map_expr`` (``_out_ind.get()[0]`` is the output index). CUDA's ``rsqrt`` and CuPy's
``cupy::type_traits::conditional`` get host stand-ins; ``__device__`` is dropped.

What it cannot show: anything about threads (the order of a reduction's partial results: the merge of the
Welford triples is run as a tree in its own test), float16 arithmetic, or CUDA's own math library.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double", np.dtype(np.int32): "int",
          np.dtype(np.int64): "long long", np.dtype(np.bool_): "bool"}
NAMED = {"int32": np.int32, "int64": np.int64, "bool": np.bool_, "float32": np.float32, "float64": np.float64}

PRELUDE = r"""
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#define __device__
#define __forceinline__
namespace cupy { namespace type_traits { using std::conditional; } }
template <typename U> U rsqrt(U x) { return U(1) / std::sqrt(x); }
using std::sqrt;
struct cnn_host_indexer {
    ptrdiff_t n, idx[1];
    ptrdiff_t size() const { return n; }
    const ptrdiff_t* get() const { return idx; }
};
template <typename U> U* cnn_load(const char* path, size_t n) {
    U* p = static_cast<U*>(std::malloc(n * sizeof(U) + 1));
    FILE* f = std::fopen(path, "rb");
    if (!f || std::fread(p, sizeof(U), n, f) != n) std::exit(2);
    std::fclose(f);
    return p;
}
template <typename U> void cnn_save(const char* path, const U* p, size_t n) {
    FILE* f = std::fopen(path, "wb");
    std::fwrite(p, sizeof(U), n, f);
    std::fclose(f);
}
"""


def _params(spec: str) -> list[tuple[bool, str, str]]:
    """(raw, type, name) of each parameter of a CuPy kernel signature."""
    out = []
    for q in spec.split(","):
        words = q.split()
        if words:
            out.append(("raw" in words[:-2], words[-2], words[-1]))
    return out


def _literal(value, ctype: str) -> str:
    if ctype == "bool":
        return "true" if value else "false"
    return repr(int(value)) if ctype in ("int", "long long") else repr(float(value))


def run(kernel, *args, size: int | None = None, axis: int | None = None, workdir: Path) -> tuple[np.ndarray, ...]:
    """Run ``kernel`` (a ``cnn_cifar.nn.kernels.Kernel``) on host arrays and scalars ``args`` (inputs, then
    optionally every output, whose values it starts from); returns the outputs as NumPy arrays."""
    in_spec, out_spec = kernel.args[0], kernel.args[1]
    ins, outs = _params(in_spec), _params(out_spec)
    params = ins + outs
    reduction = kernel.kind == "ReductionKernel"
    if reduction and axis != 1:
        raise ValueError("reductions run over axis 1 of (C, M) inputs only")
    tdt = next(np.asarray(a).dtype for a, (_, t, _) in zip(args, params) if isinstance(a, np.ndarray) and t == "T")
    ctype = lambda t: CTYPES[np.dtype(NAMED[t])] if t in NAMED else CTYPES[tdt]      # noqa: E731
    looped = args[:len(ins)] if reduction else args             # a reduction's outputs have the reduced shape
    arrays = [a for a, (raw, _, _) in zip(looped, params) if isinstance(a, np.ndarray) and not raw]
    shape = np.broadcast_shapes(*[a.shape for a in arrays]) if arrays else (size,)
    if reduction:
        c, m = shape
        out_shape = (c,)
    given = list(args[len(ins):])
    if not given:
        given = [np.zeros(out_shape if reduction else shape, dtype=NAMED.get(t, tdt)) for _, t, _ in outs]
    decl, bind_in, bind_out, save = [], [], [], []
    for k, (value, (raw, t, name)) in enumerate(zip(list(args[:len(ins)]) + given, params)):
        ct = ctype(t)
        if not isinstance(value, np.ndarray):
            decl.append(f"const {ct} {name} = {_literal(value, ct)};")
            continue
        is_out = k >= len(ins)
        target = (out_shape if reduction else shape) if is_out else shape
        data = np.ascontiguousarray(value if raw else np.broadcast_to(value, target), dtype=NAMED.get(t, tdt))
        data.tofile(workdir / f"a{k}.bin")
        var = name if raw else f"_raw_{name}"
        decl.append(f'{ct}* {var} = cnn_load<{ct}>("{workdir}/a{k}.bin", {data.size});')
        if is_out:
            save.append((k, var, data))
        if not raw:
            ref = f"{'' if is_out else 'const '}{ct}& {name} = _raw_{name}[{'c' if reduction and is_out else 'i'}];"
            (bind_out if is_out else bind_in).append(ref)
    if reduction:
        _, _, map_expr, reduce_expr, post_map_expr, identity = kernel.args
        rtype = kernel.options.get("reduce_type", "T")
        body = f"""
#define REDUCE(a, b) ({reduce_expr})
#define POST_MAP(a) ({post_map_expr})
    typedef {rtype} _type_reduce;
    cnn_host_indexer _out_ind{{{c}, {{0}}}};
    for (ptrdiff_t c = 0; c < {c}; ++c) {{
        _type_reduce _s = _type_reduce({identity});
        for (ptrdiff_t j = 0; j < {m}; ++j) {{
            const ptrdiff_t i = c * {m} + j;
            {' '.join(bind_in)}
            _type_reduce _a = static_cast<_type_reduce>({map_expr});
            _s = REDUCE(_s, _a);
        }}
        _out_ind.idx[0] = c;
        {' '.join(bind_out)}
        POST_MAP(_s);
    }}"""
    else:
        n = int(np.prod(shape))
        body = f"""
    cnn_host_indexer _ind{{{n}, {{0}}}};
    for (ptrdiff_t i = 0; i < {n}; ++i) {{
        _ind.idx[0] = i;
        {' '.join(bind_in)} {' '.join(bind_out)}
        {kernel.args[2]}
        ;
    }}"""
    saves = "\n".join(f'    cnn_save("{workdir}/o{k}.bin", {var}, {data.size});' for k, var, data in save)
    src = (PRELUDE + kernel.options.get("preamble", "") + f"\ntypedef {CTYPES[tdt]} T;\nint main() {{\n    "
           + "\n    ".join(decl) + body + "\n" + saves + "\n    return 0;\n}\n")
    (workdir / "k.cpp").write_text(src)
    subprocess.run(["g++", "-O1", "-w", "-o", str(workdir / "k"), str(workdir / "k.cpp")], check=True)
    subprocess.run([str(workdir / "k")], check=True)
    return tuple(np.fromfile(workdir / f"o{k}.bin", dtype=data.dtype).reshape(data.shape) for k, _, data in save)
