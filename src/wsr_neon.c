/* The NEON (aarch64 Advanced SIMD) micro-kernel of the weight-stationary
 * recurrence.  NEON is part of every aarch64 CPU, so on aarch64 this is the
 * automatic path.
 *
 * A tile is MR batch rows by NV vectors of 4 output columns in MR*NV
 * q-register accumulators for the whole k loop (32 registers): MR is up to
 * 6 with NV = 4 (one half panel, 24 accumulators); one or two rows take
 * NV = 8.  Columns past H in the last panel go through a small buffer.
 * Layout and invariant: src/wsr_internal.h. */
#include "wsr_internal.h"

#if WSR_AARCH64
#include <arm_neon.h>

#define MR_MAX 6
#define NV_MAX 8
#define VW 4

WSR_INLINE float32x4_t tanh4(float32x4_t a) {
    const float32x4_t cl = vdupq_n_f32(WSR_TANH_CLAMP);
    /* FMIN/FMAX return NaN when either operand is NaN: a NaN passes */
    float32x4_t x = vminq_f32(cl, a);
    x = vmaxq_f32(vnegq_f32(cl), x);
    const float32x4_t x2 = vmulq_f32(x, x);
    float32x4_t p = vfmaq_f32(vdupq_n_f32(WSR_TANH_P1), x2, vdupq_n_f32(WSR_TANH_P0));
    p = vfmaq_f32(vdupq_n_f32(WSR_TANH_P2), x2, p);
    p = vfmaq_f32(vdupq_n_f32(WSR_TANH_P3), x2, p);
    p = vfmaq_f32(vdupq_n_f32(WSR_TANH_P4), x2, p);
    p = vfmaq_f32(vdupq_n_f32(WSR_TANH_P5), x2, p);
    p = vfmaq_f32(vdupq_n_f32(WSR_TANH_P6), x2, p);
    p = vmulq_f32(x, p);
    float32x4_t q = vfmaq_f32(vdupq_n_f32(WSR_TANH_Q1), x2, vdupq_n_f32(WSR_TANH_Q0));
    q = vfmaq_f32(vdupq_n_f32(WSR_TANH_Q2), x2, q);
    q = vfmaq_f32(vdupq_n_f32(WSR_TANH_Q3), x2, q);
    const float32x4_t r = vdivq_f32(p, q);
    const uint32x4_t small = vcltq_f32(vabsq_f32(a), vdupq_n_f32(WSR_TANH_SMALL));
    const uint32x4_t big = vcgeq_f32(vabsq_f32(a), vdupq_n_f32(WSR_TANH_ONE));
    const float32x4_t one = vbslq_f32(vdupq_n_u32(0x80000000u), a, vdupq_n_f32(1.0f));
    return vbslq_f32(big, one, vbslq_f32(small, a, r));
}

WSR_INLINE float32x4_t load(const float* p, int n) {
    if (n >= VW) return vld1q_f32(p);
    float buf[VW] = {0.0f, 0.0f, 0.0f, 0.0f};
    memcpy(buf, p, (size_t)n * sizeof(float));
    return vld1q_f32(buf);
}

WSR_INLINE void store(float* p, int n, float32x4_t x) {
    if (n >= VW) {
        vst1q_f32(p, x);
    } else {
        float buf[VW];
        vst1q_f32(buf, x);
        memcpy(p, buf, (size_t)n * sizeof(float));
    }
}

/* out[b0:b0+MR, c:c+4*NV] (clipped to c1); MR, NV, bwd are constants after inlining */
WSR_INLINE void tile(const wsr_step* s, int b0, int c, int c1, const int MR, const int NV,
                     const int bwd) {
    const int H = s->H;
    const float* wp[NV_MAX];
    int n[NV_MAX];
    float32x4_t acc[MR_MAX][NV_MAX];
    WSR_UNROLL
    for (int v = 0; v < NV; v++) {
        const int cv = c + VW * v;
        n[v] = c1 - cv;
        wp[v] = s->packed + (ptrdiff_t)(cv / WSR_NR) * H * WSR_NR + cv % WSR_NR;
    }
    WSR_UNROLL
    for (int r = 0; r < MR; r++) {
        WSR_UNROLL
        for (int v = 0; v < NV; v++)
            acc[r][v] = load(s->out + (ptrdiff_t)(b0 + r) * H + c + VW * v, n[v]);
    }
    if (s->in != NULL) {
        const float* in = s->in + (ptrdiff_t)b0 * H;
        for (int k = 0; k < H; k++) {
            float32x4_t w[NV_MAX];
            WSR_UNROLL
            for (int v = 0; v < NV; v++) w[v] = vld1q_f32(wp[v] + (ptrdiff_t)k * WSR_NR);
            WSR_UNROLL
            for (int r = 0; r < MR; r++) {
                const float a = in[(ptrdiff_t)r * H + k];
                WSR_UNROLL
                for (int v = 0; v < NV; v++) acc[r][v] = vfmaq_n_f32(acc[r][v], w[v], a);
            }
        }
    }
    /* the epilogue: every result first, then every store, so that no load of h
     * waits behind a store to out */
    WSR_UNROLL
    for (int r = 0; r < MR; r++) {
        const float* h = bwd ? s->h + (ptrdiff_t)(b0 + r) * H + c : NULL;
        WSR_UNROLL
        for (int v = 0; v < NV; v++) {
            float32x4_t x = acc[r][v];
            if (!bwd) {
                if (s->relu)
                    x = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(x),
                                                        vcgtq_f32(x, vdupq_n_f32(0.0f))));
                else
                    x = tanh4(x);
            } else {
                const float32x4_t hv = load(h + VW * v, n[v]);
                if (s->relu)
                    /* forward: h = max(0, a)  ->  da = [h > 0] dh */
                    x = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(x),
                                                        vcgtq_f32(hv, vdupq_n_f32(0.0f))));
                else
                    /* forward: h = tanh(a)  ->  da = (1 - h*h) dh */
                    x = vmulq_f32(x, vfmsq_f32(vdupq_n_f32(1.0f), hv, hv));
            }
            acc[r][v] = x;
        }
    }
    WSR_UNROLL
    for (int r = 0; r < MR; r++) {
        float* o = s->out + (ptrdiff_t)(b0 + r) * H + c;
        WSR_UNROLL
        for (int v = 0; v < NV; v++) store(o + VW * v, n[v], acc[r][v]);
    }
}

typedef void (*tile_fn)(const wsr_step*, int, int, int);

#define DEF(MR, NV)                                                                    \
    static void fwd_##MR##_##NV(const wsr_step* s, int b0, int c, int c1) {            \
        tile(s, b0, c, c1, MR, NV, 0);                                                 \
    }                                                                                  \
    static void bwd_##MR##_##NV(const wsr_step* s, int b0, int c, int c1) {            \
        tile(s, b0, c, c1, MR, NV, 1);                                                 \
    }
#define DEF4(MR) DEF(MR, 1) DEF(MR, 2) DEF(MR, 3) DEF(MR, 4)
#define DEF8(MR) DEF4(MR) DEF(MR, 5) DEF(MR, 6) DEF(MR, 7) DEF(MR, 8)
DEF8(1) DEF8(2) DEF4(3) DEF4(4) DEF4(5) DEF4(6)

#define ROW4(d, MR) {0, d##_##MR##_1, d##_##MR##_2, d##_##MR##_3, d##_##MR##_4, 0, 0, 0, 0}
#define ROW8(d, MR)                                                                     \
    {0, d##_##MR##_1, d##_##MR##_2, d##_##MR##_3, d##_##MR##_4, d##_##MR##_5,            \
     d##_##MR##_6, d##_##MR##_7, d##_##MR##_8}
#define TABLE(d)                                                                        \
    {{0}, ROW8(d, 1), ROW8(d, 2), ROW4(d, 3), ROW4(d, 4), ROW4(d, 5), ROW4(d, 6)}
/* [mr][nv]; NULL where not instantiated */
static const tile_fn fwd_tab[MR_MAX + 1][NV_MAX + 1] = TABLE(fwd);
static const tile_fn bwd_tab[MR_MAX + 1][NV_MAX + 1] = TABLE(bwd);

static void run(const wsr_step* s, int c0, int c1, const tile_fn tab[MR_MAX + 1][NV_MAX + 1]) {
    const int B = s->B;
    const int mr0 = B < MR_MAX ? B : MR_MAX;
    /* vectors per tile: enough independent accumulators for the first rows */
    const int nv0 = mr0 >= 3 ? 4 : 8;
    /* blocks of mr0 rows; a last block of fewer than mr0/2 rows has too few
     * accumulators, so it shares with the one before (33 rows by 8: 8 + 8 +
     * 8 + 5 + 4, not 8 + 8 + 8 + 8 + 1) */
    const int rem = B % mr0;
    const int split = rem > 0 && rem < mr0 / 2 && B > mr0 ? B - rem - mr0 : B;
    for (int c = c0; c < c1; c += VW * nv0) {
        const int left = (c1 - c + VW - 1) / VW;
        const int nv = left < nv0 ? left : nv0;
        int b0 = 0;
        for (; b0 < split; b0 += mr0) {
            const int mr = B - b0 < mr0 ? B - b0 : mr0;
            tab[mr][nv](s, b0, c, c1);
        }
        if (split < B) {
            const int half = (B - split + 1) / 2;
            tab[half][nv](s, split, c, c1);
            tab[B - split - half][nv](s, split + half, c, c1);
        }
    }
}

static void forward(const wsr_step* s, int c0, int c1) { run(s, c0, c1, fwd_tab); }
static void backward(const wsr_step* s, int c0, int c1) { run(s, c0, c1, bwd_tab); }

const wsr_kernels rnn_ext_wsr_neon = {"neon", forward, backward, NULL, NULL};

#else
typedef int rnn_ext_wsr_neon_unused; /* not an aarch64 build: an empty unit */
#endif
