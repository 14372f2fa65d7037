"""SIMD vectors for Numba kernels, one vector register wide, written as LLVM IR intrinsics.

Numba has no vector type of its own, and LLVM's auto-vectoriser does not keep a
GEMM micro-kernel's accumulators in registers (scalar tiles spill, measured at
5-7 GFLOP/s). So we give Numba one: :class:`SimdVector` is an LLVM ``<L x T>``
value the width of one vector register of the CPU Numba compiles for: 512 bits
(16 x float32 or 8 x float64, an AVX-512 ``zmm`` register) where the CPU has
AVX-512F, else 256 bits (8 x float32 or 4 x float64, an AVX2 ``ymm``). The
functions below are the handful of operations a kernel needs. Each one is an
``@intrinsic``: it emits a single LLVM instruction that is inlined into the
calling ``@njit`` function, so a loop written with them compiles to exactly the
loads, broadcasts and FMAs it spells out.

Lane count follows the array's dtype: ``lanes(x) == VECTOR_BYTES // x.itemsize``.
All memory operations take a 1-D contiguous array and a flat element index and do
no bounds checking (the caller guarantees ``i + lanes <= x.size``).

The width changes the order of some sums, and LLVM tunes the code it makes for the CPU
it compiles for (where fast-math lets it regroup a sum, it may do so on one CPU and not
on another), so results are the same to the bit on one machine, for any thread count,
cold or cached, but not always across CPUs: a Zen 4 and an Intel Xeon, both AVX-512,
trained the main job to different last bits. Numba's on-disk cache is kept per CPU, so
a cache never mixes them.
"""

from __future__ import annotations

import math
import operator

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model

from tinyvae._backend.numba_flags import njit


def _vector_bytes() -> int:
    """64 where the CPU Numba compiles for has AVX-512F, else 32 (AVX2).

    Measured on a Zen 5 core: OpenBLAS runs 512-bit kernels there, and the GEMM with
    256-bit vectors reached 0.53 of its speed, with 512-bit 0.97 (README, Speed).
    NUMBA_CPU_FEATURES, when set (a portable build), decides instead of the host.
    """
    import numba
    from llvmlite import binding

    if numba.config.CPU_FEATURES:
        return 64 if "+avx512f" in numba.config.CPU_FEATURES.split(",") else 32
    return 64 if binding.get_host_cpu_features().get("avx512f") else 32


#: bytes of one vector register: 64 (AVX-512 zmm) or 32 (AVX2 ymm)
VECTOR_BYTES = _vector_bytes()


class SimdVector(types.Type):
    """Numba type of an LLVM vector ``<lanes x dtype>`` held in one register."""

    def __init__(self, dtype, lanes):
        self.dtype = dtype
        self.lanes = lanes
        super().__init__(name=f"SimdVector({dtype}, {lanes})")


@register_model(SimdVector)
class _SimdVectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.lanes))


def _float_array(x):
    return isinstance(x, types.Array) and x.dtype in (types.float32, types.float64)


def _vector_of(arrtype):
    return SimdVector(arrtype.dtype, VECTOR_BYTES // (arrtype.dtype.bitwidth // 8))


def _element_pointer(context, builder, arrtype, arr, index):
    data = context.make_array(arrtype)(context, builder, value=arr).data
    return builder.gep(data, [index])


def _pointer_at(context, builder, arrtype, arr, itype, i):
    """Pointer to element i (of integer type itype) of the 1-D array arr."""
    return _element_pointer(context, builder, arrtype, arr, context.cast(builder, i, itype, types.intp))


def _indexed_pointer(context, builder, sig, args):
    """Pointer to element args[1] (any integer type) of the 1-D array args[0]."""
    return _pointer_at(context, builder, sig.args[0], args[0], sig.args[1], args[1])


def _load_vector(context, builder, vt, ptr, dtype):
    """The vector of type vt starting at ptr (unaligned load)."""
    lt = context.get_value_type(vt)
    return builder.load(_vector_pointer(builder, ptr, lt), align=dtype.bitwidth // 8)


def _vector_pointer(builder, ptr, vtype):
    return builder.bitcast(ptr, vtype.as_pointer())


@intrinsic
def lanes(typingctx, x):
    """Number of lanes of a vector of ``x``'s dtype (a compile-time constant)."""
    if not _float_array(x):
        return None
    n = _vector_of(x).lanes

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, n)

    return types.intp(x), codegen


@intrinsic
def vload(typingctx, x, i):
    """x[i : i + lanes] as a vector (unaligned load)."""
    if not _float_array(x) or not isinstance(i, types.Integer):
        return None
    vt = _vector_of(x)

    def codegen(context, builder, sig, args):
        return _load_vector(context, builder, vt, _indexed_pointer(context, builder, sig, args), x.dtype)

    return vt(x, i), codegen


@intrinsic
def vstore(typingctx, x, i, v):
    """x[i : i + lanes] = v (unaligned store)."""
    if not _float_array(x) or not isinstance(v, SimdVector) or v.dtype != x.dtype:
        return None

    def codegen(context, builder, sig, args):
        ptr = _indexed_pointer(context, builder, sig, args)
        val = args[2]
        builder.store(val, _vector_pointer(builder, ptr, val.type), align=x.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(x, i, v), codegen


@intrinsic
def prefetch_for_write(typingctx, x, i):
    """Hint that x[i] is about to be written: fetch its cache line now (``prefetchw``).

    A tile of C written once (k <= KC) would otherwise wait for each line's read for
    ownership at its store; fetched when the tile's FMAs start, the reads overlap them.
    """
    if not _float_array(x) or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ptr = _indexed_pointer(context, builder, sig, args)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # rw = 1 (write), locality = 3 (keep in all cache levels), cache type 1 (data)
        builder.call(fn, [ptr, ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(x, i), codegen


@intrinsic
def vbroadcast(typingctx, x, i):
    """A vector with every lane equal to x[i]."""
    if not _float_array(x) or not isinstance(i, types.Integer):
        return None
    vt = _vector_of(x)

    def codegen(context, builder, sig, args):
        ptr = _indexed_pointer(context, builder, sig, args)
        return _splat(context, builder, vt, builder.load(ptr))

    return vt(x, i), codegen


def _splat(context, builder, vt, scalar):
    lt = context.get_value_type(vt)
    one = builder.insert_element(ir.Constant(lt, ir.Undefined), scalar,
                                 ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), vt.lanes), [0] * vt.lanes)
    return builder.shuffle_vector(one, ir.Constant(lt, ir.Undefined), mask)


@intrinsic
def vsplat(typingctx, x, s):
    """A vector of x's dtype with every lane equal to the scalar s (converted)."""
    if not _float_array(x) or not isinstance(s, (types.Float, types.Integer)):
        return None
    vt = _vector_of(x)

    def codegen(context, builder, sig, args):
        scalar = context.cast(builder, args[1], sig.args[1], vt.dtype)
        return _splat(context, builder, vt, scalar)

    return vt(x, s), codegen


@intrinsic
def vzero(typingctx, x):
    """A vector of zeros of x's dtype."""
    if not _float_array(x):
        return None
    vt = _vector_of(x)

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(vt), None)

    return vt(x), codegen


@intrinsic
def vzero_half(typingctx, x):
    """A vector of zeros of x's dtype, half a register wide (a ymm of a 512-bit CPU).

    It picks the width of the ``*_like`` operations below: a GEMM's last column panel
    of at most half a vector (n = 40 in float32 on AVX-512: 32 + 8 columns) runs its
    FMAs on half-width vectors, which cost half of full ones where the core splits a
    512-bit FMA in two (Zen 4), and stores them whole instead of through a scratch tile.
    """
    if not _float_array(x):
        return None
    full = _vector_of(x)
    vt = SimdVector(full.dtype, full.lanes // 2)

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(vt), None)

    return vt(x), codegen


def _vector_like(name, doc, make):
    """An intrinsic name(v, x, i): make(context, builder, v's type, pointer to x[i], dtype)."""
    def like(typingctx, v, x, i):
        if not isinstance(v, SimdVector) or not _float_array(x) or x.dtype != v.dtype:
            return None

        def codegen(context, builder, sig, args):
            ptr = _pointer_at(context, builder, sig.args[1], args[1], sig.args[2], args[2])
            return make(context, builder, v, ptr, x.dtype)

        return v(v, x, i), codegen

    like.__name__ = like.__qualname__ = name
    like.__doc__ = doc
    return intrinsic(like)


vload_like = _vector_like("vload_like", "x[i : i + lanes of v] as a vector of v's type (unaligned load).",
                          _load_vector)
vbroadcast_like = _vector_like(
    "vbroadcast_like", "A vector of v's type with every lane equal to x[i].",
    lambda context, builder, vt, ptr, dtype: _splat(context, builder, vt, builder.load(ptr)))


def _call_llvm_intrinsic(builder, name, vtype, operands):
    fnty = ir.FunctionType(vtype, [vtype] * len(operands))
    suffix = f"v{vtype.count}f{32 if isinstance(vtype.element, ir.FloatType) else 64}"
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.{name}.{suffix}")
    return builder.call(fn, operands)


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c, lane by lane, with one rounding (vfmadd)."""
    if not (isinstance(a, SimdVector) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        return _call_llvm_intrinsic(builder, "fma", args[0].type, list(args))

    return a(a, b, c), codegen


def _binary(op):
    def binary(typingctx, a, b):
        if not (isinstance(a, SimdVector) and a == b):
            return None

        def codegen(context, builder, sig, args):
            if op in ("maxnum", "minnum"):
                return _call_llvm_intrinsic(builder, op, args[0].type, list(args))
            return getattr(builder, op)(*args)

        return a(a, b), codegen

    binary.__name__ = binary.__qualname__ = f"v{op}"
    return intrinsic(binary)


vadd = _binary("fadd")
vsub = _binary("fsub")
vmul = _binary("fmul")
vdiv = _binary("fdiv")
vmax = _binary("maxnum")
vmin = _binary("minnum")


@intrinsic
def vwhere_less(typingctx, a, b, x, y):
    """x if a < b else y, lane by lane (vcmpltps + vblendvps); a NaN compares false.

    For in-place updates such as ReLU's ``zero if v < zero else v``: written as a scalar
    loop, LLVM drops the store of the unchanged lanes and vectorises what is left as a
    masked store (vmaskmovps), which AMD's Zen cores run ~7x slower than a plain store
    (in-place ReLU measured at 0.50 ns against 0.074 ns a float32 element on a Zen 3).
    """
    if not (isinstance(a, SimdVector) and a == b == x == y):
        return None

    def codegen(context, builder, sig, args):
        va, vb, vx, vy = args
        chosen = builder.select(builder.fcmp_ordered("<", va, vb), vx, vy)
        # an arithmetic fence (no instruction) hides the select from the pass that
        # would otherwise still see "store(select(c, 0, load p), p)" and mask the store
        return _call_llvm_intrinsic(builder, "arithmetic.fence", chosen.type, [chosen])

    return a(a, b, x, y), codegen


@intrinsic
def vsqrt(typingctx, a):
    """Square root, lane by lane (vsqrtps/pd)."""
    if not isinstance(a, SimdVector):
        return None

    def codegen(context, builder, sig, args):
        return _call_llvm_intrinsic(builder, "sqrt", args[0].type, list(args))

    return a(a), codegen


@intrinsic
def flush_subnormal(typingctx, x):
    """x, or +0 where |x| is below the smallest normal float (a subnormal, or a zero),
    for a scalar or lane by lane; NaN and inf pass unchanged.

    For state that decays towards zero, such as Adam's first moment of a weight whose
    gradient is zero step after step (0.9^t reaches the subnormals after ~830 steps):
    arithmetic on subnormal operands takes a microcode assist on Intel cores, ~100
    cycles. No fast-math flags, so the comparison stays exact.
    """
    if isinstance(x, SimdVector):
        dtype = x.dtype
    elif isinstance(x, types.Float):
        dtype = x
    else:
        return None
    smallest_normal = float(np.finfo(str(dtype)).tiny)

    def codegen(context, builder, sig, args):
        (v,) = args
        ty = v.type
        if isinstance(ty, ir.VectorType):
            tiny = ir.Constant(ty, [ir.Constant(ty.element, smallest_normal)] * ty.count)
            zero = ir.Constant(ty, [ir.Constant(ty.element, 0.0)] * ty.count)
            fabs = f"llvm.fabs.v{ty.count}f{dtype.bitwidth}"
        else:
            tiny, zero = ir.Constant(ty, smallest_normal), ir.Constant(ty, 0.0)
            fabs = f"llvm.fabs.f{dtype.bitwidth}"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty]), fabs)
        small = builder.fcmp_ordered("<", builder.call(fn, [v]), tiny)
        return builder.select(small, zero, v)

    return x(x), codegen


@intrinsic
def add_in_order(typingctx, a, b):
    """a + b for two scalars of one float type, kept in the order written.

    Numba's fast-math pass gives reassociation to every float add that has no flags
    of its own, and LLVM may regroup a chain of such adds into a tree, in one caller and
    not in another (a sum inlined into a loop over pixels, on Intel with AVX-512). This
    add carries "nsz" only, so the pass leaves it alone and the chain keeps its order.
    """
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, sig, args):
        total = builder.fadd(args[0], args[1])
        total.flags.append("nsz")
        return total

    return a(a, b), codegen


@intrinsic
def opaque(typingctx, i):
    """i itself, through an empty inline asm: LLVM cannot relate the result to other
    values, so it keeps an index of its own in a register.

    A GEMM kernel reading rows of A in place walks 12 row indices that all move by the
    same step. LLVM's loop strength reduction folds them into one pointer, rebuilt by a
    chain of 12 dependent adds every step (12 cycles for 6 cycles of FMAs). Passing each
    panel's row indices through this keeps them separate; each row is then one of them
    plus 0, 1 or 2 row strides, which an x86 address computes for free.
    """
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ty = context.get_value_type(sig.return_type)
        return builder.asm(ir.FunctionType(ty, [ty]), "", "=r,0", [args[0]], False)

    return i(i), codegen


@intrinsic
def scalar_like(typingctx, x, s):
    """The scalar s converted to x's dtype (keeps float32 loops in float32)."""
    if not _float_array(x) or not isinstance(s, (types.Float, types.Integer, types.Boolean)):
        return None

    def codegen(context, builder, sig, args):
        return context.cast(builder, args[1], sig.args[1], x.dtype)

    return x.dtype(x, s), codegen


# ----------------------------------------------------------------------------
# arithmetic operators, so one formula serves both scalars and vectors
# ----------------------------------------------------------------------------


@intrinsic
def _splat_like(typingctx, v, s):
    if not isinstance(v, SimdVector) or not isinstance(s, (types.Float, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        scalar = context.cast(builder, args[1], sig.args[1], v.dtype)
        return _splat(context, builder, v, scalar)

    return v(v, s), codegen


def _overload_binary(op, vector_fn):
    def impl(a, b):
        if isinstance(a, SimdVector) and a == b:
            return lambda a, b: vector_fn(a, b)
        if isinstance(a, SimdVector) and isinstance(b, (types.Float, types.Integer)):
            return lambda a, b: vector_fn(a, _splat_like(a, b))
        if isinstance(b, SimdVector) and isinstance(a, (types.Float, types.Integer)):
            return lambda a, b: vector_fn(_splat_like(b, a), b)
        return None

    overload(op)(impl)


_overload_binary(operator.add, vadd)
_overload_binary(operator.sub, vsub)
_overload_binary(operator.mul, vmul)
_overload_binary(operator.truediv, vdiv)


def sqrt(x):
    """Square root of a scalar or, lane by lane, of a SimdVector (inside @njit code)."""
    return math.sqrt(x)


@overload(sqrt)
def _sqrt_overload(x):
    if isinstance(x, SimdVector):
        return lambda x: vsqrt(x)
    if isinstance(x, types.Float):
        return lambda x: math.sqrt(x)
    return None


# ----------------------------------------------------------------------------
# scalar memory access without Numba's negative-index wraparound
# ----------------------------------------------------------------------------


@intrinsic
def load(typingctx, x, i):
    """x[i] for a flat index 0 <= i < x.size (no wraparound test: packing loops stay tight)."""
    if not _float_array(x) or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_indexed_pointer(context, builder, sig, args))

    return x.dtype(x, i), codegen


@intrinsic
def store(typingctx, x, i, v):
    """x[i] = v for a flat index 0 <= i < x.size (v converted to x's dtype)."""
    if not _float_array(x) or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        val = context.cast(builder, args[2], sig.args[2], x.dtype)
        builder.store(val, _indexed_pointer(context, builder, sig, args))
        return context.get_dummy_value()

    return types.none(x, i, v), codegen


CACHE_LINE = 64  # bytes


@njit
def cache_line_aligned(size, like):
    """An uninitialised 1-D array of `size` elements of like's dtype whose first element
    starts on a cache line (a view into a slightly longer array), so that no vector load
    or store at a multiple of the vector width straddles two lines. Numba's np.empty put
    32 KB at 32 bytes past a line, NumPy's arrays start 48 bytes before one."""
    pad = CACHE_LINE // like.itemsize
    raw = np.empty(size + pad, like.dtype)
    skip = (-raw.ctypes.data % CACHE_LINE) // like.itemsize
    return raw[skip:skip + size]


def aligned_empty(shape, dtype):
    """np.empty(shape, dtype) in C order, starting on a cache line (cache_line_aligned):
    for arrays that the kernels read or write as whole vectors."""
    return cache_line_aligned(math.prod(shape), np.empty(0, dtype)).reshape(shape)


# ----------------------------------------------------------------------------
# in-register transpose, for packing GEMM panels from the "wrong" layout
# ----------------------------------------------------------------------------


@intrinsic
def transpose_block(typingctx, src, src_off, src_stride, nrows, dst, dst_off, dst_stride):
    """Copy a lanes x lanes block, transposed.

    dst[dst_off + c*dst_stride + r] = src[src_off + r*src_stride + c] for r, c < lanes.

    Rows r >= nrows repeat row nrows - 1 (they must exist in dst, not in src).
    Uses log2(lanes) rounds of shuffles that swap the off-diagonal h x h blocks
    of every 2h x 2h block; after h = lanes/2, ..., 1 the block is transposed.
    """
    if not (_float_array(src) and _float_array(dst) and src.dtype == dst.dtype):
        return None
    vt = _vector_of(src)
    L = vt.lanes

    def codegen(context, builder, sig, args):
        s, so, ss, nr, d, do, ds = args
        tys = sig.args
        so, ss, nr, do, ds = (context.cast(builder, v, t, types.intp)
                              for v, t in zip((so, ss, nr, do, ds),
                                              (tys[1], tys[2], tys[3], tys[5], tys[6]), strict=True))
        lt = context.get_value_type(vt)
        last = builder.sub(nr, ir.Constant(nr.type, 1))
        rows = []
        for r in range(L):
            rr = ir.Constant(nr.type, r)
            row = builder.select(builder.icmp_signed("<", rr, nr), rr, last)
            off = builder.add(so, builder.mul(row, ss))
            ptr = _element_pointer(context, builder, tys[0], s, off)
            rows.append(builder.load(_vector_pointer(builder, ptr, lt), align=src.dtype.bitwidth // 8))
        i32 = ir.IntType(32)
        h = L // 2
        while h >= 1:
            lo_mask = ir.Constant(ir.VectorType(i32, L),
                                  [c if c & h == 0 else c - h + L for c in range(L)])
            hi_mask = ir.Constant(ir.VectorType(i32, L),
                                  [c + h if c & h == 0 else c + L for c in range(L)])
            new = list(rows)
            for r in range(L):
                if r & h == 0:
                    new[r] = builder.shuffle_vector(rows[r], rows[r + h], lo_mask)
                    new[r + h] = builder.shuffle_vector(rows[r], rows[r + h], hi_mask)
            rows = new
            h //= 2
        for c in range(L):
            off = builder.add(do, builder.mul(ir.Constant(do.type, c), ds))
            ptr = _element_pointer(context, builder, tys[4], d, off)
            builder.store(rows[c], _vector_pointer(builder, ptr, lt), align=dst.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(src, src_off, src_stride, nrows, dst, dst_off, dst_stride), codegen


# ----------------------------------------------------------------------------
# exp for loops the compiler can vectorise
# ----------------------------------------------------------------------------

# float32: Taylor degree 7, float64: degree 13, on |r| <= ln(2)/2: truncation
# error below half an ulp (0.347^8/8! = 6e-9, 0.347^14/14! = 4e-18).
_EXP_DEGREE = {32: 7, 64: 13}
_EXP_FORMAT = {32: (23, 127, ir.IntType(32)), 64: (52, 1023, ir.IntType(64))}
# ln 2 split so n * _LN2_HI is exact for |n| < 2^11 (Cody & Waite)
_LN2_HI = {32: 0.693145751953125, 64: 0.6931471803691238}
_LN2_LO = {32: 1.428606765330187e-06, 64: 1.9082149292705877e-10}
#: below this the result is flushed to exactly 0 (e^x would be subnormal)
_EXP_MIN = {32: -87.0, 64: -708.0}


@intrinsic
def exp_nonpositive(typingctx, x):
    """e^x for x <= 0 (e^x = 0 below -87 / -708; NaN stays NaN), in plain vectorisable IR.

    x = n ln2 + r, |r| <= ln2/2; e^x = 2^n * poly(r), 2^n built from its exponent
    bits. The instructions carry no fast-math flags, so the ln 2 split survives
    the reassociation our kernels otherwise allow. Accurate to ~1 ulp.
    """
    if not isinstance(x, types.Float):
        return None
    bits = x.bitwidth

    def codegen(context, builder, sig, args):
        (v,) = args
        ft = v.type
        mant, bias, it = _EXP_FORMAT[bits]

        def const(c):
            return ir.Constant(ft, c)

        def fma(a, b, c):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ft, [ft] * 3),
                                                f"llvm.fma.f{bits}")
            return builder.call(fn, [a, b, c])

        floor = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ft, [ft]),
                                               f"llvm.floor.f{bits}")
        lo = builder.fcmp_ordered("<", v, const(_EXP_MIN[bits]))
        vc = builder.select(lo, const(_EXP_MIN[bits]), v)
        n = builder.call(floor, [fma(vc, const(1.4426950408889634), const(0.5))])
        r = fma(n, const(-_LN2_HI[bits]), vc)
        r = fma(n, const(-_LN2_LO[bits]), r)
        degree = _EXP_DEGREE[bits]
        p = const(1.0 / math.factorial(degree))
        for k in range(degree - 1, -1, -1):
            p = fma(p, r, const(1.0 / math.factorial(k)))
        e = builder.add(builder.fptosi(n, it), ir.Constant(it, bias))
        scale = builder.bitcast(builder.shl(e, ir.Constant(it, mant)), ft)
        y = builder.select(lo, const(0.0), builder.fmul(p, scale))
        return builder.select(builder.fcmp_unordered("uno", v, v), v, y)

    return x(x), codegen


# log1p(e) = 2 atanh(s), s = e / (2 + e) <= 1/3 on [0, 1]: the odd series in s
# converges by s^2 <= 1/9 per term; 8 terms (float32) / 17 (float64) reach ulp level.
_LOG1P_TERMS = {32: 8, 64: 17}


@intrinsic
def log1p_unit(typingctx, x):
    """log(1 + x) for 0 <= x <= 1 (the softplus tail log1p(e^-|v|)), vectorisable IR.

    Relative accuracy holds for tiny x too (s ~ x / 2), so no log(1 + tiny) cancellation.
    """
    if not isinstance(x, types.Float):
        return None
    bits = x.bitwidth

    def codegen(context, builder, sig, args):
        (v,) = args
        ft = v.type
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ft, [ft] * 3),
                                             f"llvm.fma.f{bits}")
        s = builder.fdiv(v, builder.fadd(v, ir.Constant(ft, 2.0)))
        s2 = builder.fmul(s, s)
        terms = _LOG1P_TERMS[bits]
        p = ir.Constant(ft, 2.0 / (2 * terms - 1))
        for k in range(terms - 2, -1, -1):
            p = builder.call(fma, [p, s2, ir.Constant(ft, 2.0 / (2 * k + 1))])
        return builder.fmul(p, s)

    return x(x), codegen
