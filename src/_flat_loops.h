/* The loops of src/_flat.pyx, written once for one floating type.
 *
 * Included twice by _flat.h (no include guard, on purpose), with
 *     real        float or double
 *     INT         an integer type as wide as real: int32_t or int64_t
 *     SQRT        sqrtf or sqrt
 *     FMA         fmaf or fma
 *     FLAT(name)  the function's name with the type's suffix
 *
 * Every array is (n,), contiguous; p the parameters, g the gradient, the rest
 * optimizer slots.  Each loop reads every array once, in order, and writes p
 * and its slots in place.  g is written only by an update that clips it
 * (cv > 0: GRAD below), exactly as clip_value would have before the update.
 * The callers (src/_flat.pyx) form the scalars as PyTorch forms them and
 * round them to `real`.
 */

/* g[i] for an update: with clip (cv > 0) first clamped to [-cv, cv] and stored back
 * (clip_value's operations: a NaN stays), so a clipped update is
 * clip_value(g, cv) then the update, in one pass. */
#define GRAD(i) (clip ? FLAT(clamp_store)(g, (i), cv) : g[i])

static inline real FLAT(clamp_store)(real *g, ptrdiff_t i, real v) {
    real x = g[i];
    x = x < -v ? -v : x;
    x = x > v ? v : x;
    g[i] = x;
    return x;
}

/* Index of the first bad element of x[0..n), or -1: a NaN or +-inf, or with
 * nan_only a NaN alone (what a clipped update must refuse: clamping makes an
 * infinity finite, not a NaN).  x - x is 0 for a finite x and NaN otherwise.
 * Per block, an OR of the comparisons (in an integer as wide as `real`, so
 * the loop vectorises) says whether the block needs an element-by-element
 * look. */
#define BAD(x) (nan_only ? (x) != (x) : (x) - (x) != 0)
RNN_EXT_FLAT_INLINE ptrdiff_t FLAT(first_bad_loop)(const real *x, ptrdiff_t n,
                                                   const int nan_only) {
    for (ptrdiff_t lo = 0; lo < n; lo += 1024) {
        const ptrdiff_t hi = lo + 1024 < n ? lo + 1024 : n;
        INT bad = 0;
        for (ptrdiff_t i = lo; i < hi; i++) bad |= BAD(x[i]);
        if (bad)
            for (ptrdiff_t i = lo; i < hi; i++)
                if (BAD(x[i])) return i;
    }
    return -1;
}
#undef BAD

RNN_EXT_FLAT_CLONES
static ptrdiff_t FLAT(first_bad)(const real *x, ptrdiff_t n, int nan_only) {
    return nan_only ? FLAT(first_bad_loop)(x, n, 1) : FLAT(first_bad_loop)(x, n, 0);
}

/* sum(x * x) in double: eight partial sums taken in turn, then added. */
RNN_EXT_FLAT_CLONES
static double FLAT(sumsq)(const real *x, ptrdiff_t n) {
    double acc[8] = {0};
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) {
            const double xj = x[i + j];
            acc[j] += xj * xj;
        }
    for (; i < n; i++) {
        const double xi = x[i];
        acc[0] += xi * xi;
    }
    double total = 0;
    for (int j = 0; j < 8; j++) total += acc[j];
    return total;
}

/* x *= s */
RNN_EXT_FLAT_CLONES
static void FLAT(scale)(real *x, ptrdiff_t n, real s) {
    for (ptrdiff_t i = 0; i < n; i++) x[i] = x[i] * s;
}

/* x := min(max(x, -v), v); a NaN compares false both times and stays. */
RNN_EXT_FLAT_CLONES
static void FLAT(clip_value)(real *x, ptrdiff_t n, real v) {
    const real lo = -v;
    for (ptrdiff_t i = 0; i < n; i++) {
        real xi = x[i];
        xi = xi < lo ? lo : xi;
        xi = xi > v ? v : xi;
        x[i] = xi;
    }
}

/* The update loops are written once, as always-inline bodies whose flags
 * (clip, the SGD mode, Adam's small and fused) the dispatching function
 * below passes as constants: each combination becomes its own loop, which
 * the compiler vectorises (a loop testing three run-time flags it does not). */

/* SGD.  mode 0 (momentum 0):  p += nlr * g
 *       mode 1 (first step):  buf := g;                 p += nlr * buf
 *       mode 2:               buf := buf * mom + g;     p += nlr * buf */
RNN_EXT_FLAT_INLINE void FLAT(sgd_loop)(real *p, real *g, real *buf, ptrdiff_t n, real nlr,
                                        real mom, const int mode, const int clip, real cv) {
    for (ptrdiff_t i = 0; i < n; i++) {
        const real gi = GRAD(i);
        if (mode == 0) {
            p[i] = p[i] + nlr * gi;
        } else {
            const real b = mode == 1 ? gi : buf[i] * mom + gi;
            buf[i] = b;
            p[i] = p[i] + nlr * b;
        }
    }
}

RNN_EXT_FLAT_CLONES
static void FLAT(sgd)(real *p, real *g, real *buf, ptrdiff_t n, real nlr, real mom,
                      int mode, real cv) {
    if (cv > 0) {
        if (mode == 0) FLAT(sgd_loop)(p, g, buf, n, nlr, mom, 0, 1, cv);
        else if (mode == 1) FLAT(sgd_loop)(p, g, buf, n, nlr, mom, 1, 1, cv);
        else FLAT(sgd_loop)(p, g, buf, n, nlr, mom, 2, 1, cv);
    } else {
        if (mode == 0) FLAT(sgd_loop)(p, g, buf, n, nlr, mom, 0, 0, cv);
        else if (mode == 1) FLAT(sgd_loop)(p, g, buf, n, nlr, mom, 1, 0, cv);
        else FLAT(sgd_loop)(p, g, buf, n, nlr, mom, 2, 0, cv);
    }
}

/* Adagrad:  s := s + g * g;  p := p + (nclr * g) / (sqrt(s) + e) */
RNN_EXT_FLAT_INLINE void FLAT(adagrad_loop)(real *p, real *g, real *s, ptrdiff_t n, real nclr,
                                            real e, const int clip, real cv) {
    for (ptrdiff_t i = 0; i < n; i++) {
        const real gi = GRAD(i);
        const real si = s[i] + gi * gi;
        s[i] = si;
        p[i] = p[i] + (nclr * gi) / (SQRT(si) + e);
    }
}

RNN_EXT_FLAT_CLONES
static void FLAT(adagrad)(real *p, real *g, real *s, ptrdiff_t n, real nclr, real e,
                          real cv) {
    if (cv > 0) FLAT(adagrad_loop)(p, g, s, n, nclr, e, 1, cv);
    else FLAT(adagrad_loop)(p, g, s, n, nclr, e, 0, cv);
}

/* sqrt(v) / bc2 for Adam, rounded once, as the division rounds it.
 * With fused != 0 the division by the constant bc2 is done without the
 * divider (Markstein's theorem: with y = RN(1/bc2) and q = RN(a y) within an
 * ulp of a/bc2, the residual r = a - bc2 q is exact in one fused multiply-add
 * and RN(q + r y) is RN(a / bc2)); the divider is then left to the one
 * division per element that has no constant divisor.  An infinite or NaN q
 * (from v = inf or NaN) is kept as it is, as the division would give it.
 * The theorem needs a normal quotient: here a = sqrt(v) is 0, +inf, NaN or
 * at least 2^-74.5, and bc2 = sqrt(1 - beta2^t) lies in [2^-27, 1], so it
 * is (tests/c/div_const_check.c checks every significand of a over that
 * domain).  fused is non-zero only where FMA is an instruction
 * (rnn_ext_flat_fused). */
#define ADAM_DENOM(vi)                                                        \
    (fused ? FLAT(div_const)(SQRT(vi), bc2, rbc2) : SQRT(vi) / bc2)

static inline real FLAT(div_const)(real a, real b, real y) {
    const real q = a * y;
    const real r = FMA(-q, b, a);
    const real q2 = FMA(r, y, q);
    return q - q == 0 ? q2 : q;
}

/* Adam:  m := lerp(m, g, w)   (m + w (g - m) when small, else g - (g - m) one_w)
 *        v := v * b2 + (c2 * g) * g
 *        p := p + (nss * m) / (sqrt(v) / bc2 + e)
 * rbc2 = RN(1 / bc2), used when fused != 0 (ADAM_DENOM). */
RNN_EXT_FLAT_INLINE void FLAT(adam_loop)(real *p, real *g, real *m, real *v, ptrdiff_t n,
                                         real w, real one_w, real b2, real c2, real nss,
                                         real bc2, real rbc2, real e, const int small,
                                         const int fused, const int clip, real cv) {
    for (ptrdiff_t i = 0; i < n; i++) {
        const real gi = GRAD(i);
        const real mi = small ? m[i] + w * (gi - m[i]) : gi - (gi - m[i]) * one_w;
        const real vi = v[i] * b2 + (c2 * gi) * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] + (nss * mi) / (ADAM_DENOM(vi) + e);
    }
}

RNN_EXT_FLAT_CLONES
static void FLAT(adam)(real *p, real *g, real *m, real *v, ptrdiff_t n, real w,
                       real one_w, int small, real b2, real c2, real nss, real bc2, real rbc2,
                       real e, int fused, real cv) {
#define ADAM(s, f, c) FLAT(adam_loop)(p, g, m, v, n, w, one_w, b2, c2, nss, bc2, rbc2, e, s, f, c, cv)
    if (cv > 0) {
        if (small) { if (fused) ADAM(1, 1, 1); else ADAM(1, 0, 1); }
        else { if (fused) ADAM(0, 1, 1); else ADAM(0, 0, 1); }
    } else {
        if (small) { if (fused) ADAM(1, 1, 0); else ADAM(1, 0, 0); }
        else { if (fused) ADAM(0, 1, 0); else ADAM(0, 0, 0); }
    }
#undef ADAM
}
#undef ADAM_DENOM
#undef GRAD
