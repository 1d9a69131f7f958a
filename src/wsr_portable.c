/* The portable C micro-kernel of the weight-stationary recurrence: every
 * platform builds it, and it is the path on CPUs without a SIMD kernel.
 * A tile is up to MR rows by one whole panel (32 columns, the padding
 * included, so every element runs the same code); the compiler vectorises
 * the 32-wide column loops for the baseline instruction set.
 * Layout and invariant: src/wsr_internal.h. */
#include "wsr_internal.h"

#define MR 4

/* out[b0:b0+mr, c:c+nc] for one panel; pw is the panel's row k = 0. */
static void tile(const wsr_step* s, const float* WSR_RESTRICT pw, int b0, int mr, int c,
                 int nc, int bwd) {
    const int H = s->H;
    float acc[MR][WSR_NR];
    for (int r = 0; r < mr; r++) {
        const float* o = s->out + (ptrdiff_t)(b0 + r) * H + c;
        for (int j = 0; j < WSR_NR; j++) acc[r][j] = j < nc ? o[j] : 0.0f;
    }
    if (s->in != NULL) {
        const float* in = s->in + (ptrdiff_t)b0 * H;
        for (int k = 0; k < H; k++) {
            const float* WSR_RESTRICT w = pw + (ptrdiff_t)k * WSR_NR;
            for (int r = 0; r < mr; r++) {
                const float a = in[(ptrdiff_t)r * H + k];
                for (int j = 0; j < WSR_NR; j++) acc[r][j] += a * w[j];
            }
        }
    }
    for (int r = 0; r < mr; r++) {
        float* o = s->out + (ptrdiff_t)(b0 + r) * H + c;
        if (!bwd) {
            for (int j = 0; j < nc; j++)
                o[j] = s->relu ? wsr_reluf(acc[r][j]) : wsr_tanhf(acc[r][j]);
        } else {
            const float* h = s->h + (ptrdiff_t)(b0 + r) * H + c;
            if (s->relu) {
                /* forward: h = max(0, a)  ->  da = [h > 0] dh */
                for (int j = 0; j < nc; j++) o[j] = h[j] > 0.0f ? acc[r][j] : 0.0f;
            } else {
                /* forward: h = tanh(a)  ->  da = (1 - h*h) dh, as (1 - h)(1 + h):
                 * without a fused multiply-add, 1 - h*h loses bits near |h| = 1 */
                for (int j = 0; j < nc; j++)
                    o[j] = acc[r][j] * ((1.0f - h[j]) * (1.0f + h[j]));
            }
        }
    }
}

static void run(const wsr_step* s, int c0, int c1, int bwd) {
    for (int c = c0; c < c1; c += WSR_NR) {
        const float* pw = s->packed + (ptrdiff_t)(c / WSR_NR) * s->H * WSR_NR;
        const int nc = c1 - c < WSR_NR ? c1 - c : WSR_NR;
        for (int b0 = 0; b0 < s->B; b0 += MR) {
            const int mr = s->B - b0 < MR ? s->B - b0 : MR;
            tile(s, pw, b0, mr, c, nc, bwd);
        }
    }
}

static void forward(const wsr_step* s, int c0, int c1) { run(s, c0, c1, 0); }
static void backward(const wsr_step* s, int c0, int c1) { run(s, c0, c1, 1); }

const wsr_kernels rnn_ext_wsr_portable = {"portable", forward, backward, NULL, NULL};
