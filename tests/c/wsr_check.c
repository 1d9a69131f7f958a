/* A stand-alone check of the weight-stationary recurrence (src/wsr.h) against
 * a naive float64 reference, for builds that Python cannot test: the aarch64
 * cross-build run under qemu-user by .ci/simd.sh (the NEON path), or any
 * native build.
 *
 *     cc -O2 -pthread -Isrc tests/c/wsr_check.c src/wsr*.c -o wsr_check -lm
 *     ./wsr_check            # every path this CPU supports; exit status 0 = all passed
 *
 * For every path, shape (T, B, H), direction, lengths (none or random) and
 * nonlinearity: the forward and backward recurrences agree with the
 * reference within 2e-5 of the largest value (float32 dot products of length
 * H, over a contractive recurrence), padded rows are exact (0, or h0 for the
 * reverse forward), and 2 and 3 threads give bit-identical results to one.
 * The float32 tanh is checked to 7 ulp against libm's double tanh, and the
 * weight-gradient product (rnn_ext_wsr_gemm_tn) exactly on small integers. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wsr.h"
#include "wsr_internal.h"

static int failures = 0, checks = 0;

static void fail(const char* what, const char* path, int T, int B, int H, int reverse,
                 int lengths, int relu, double err) {
    failures++;
    if (failures <= 20)
        printf("FAIL %s: path=%s T=%d B=%d H=%d reverse=%d lengths=%d relu=%d (err %.3g)\n", what,
               path, T, B, H, reverse, lengths, relu, err);
}

/* a deterministic generator: xorshift64*, uniform in [-1, 1) */
static uint64_t rng_state = 88172645463325252ull;
static double uniform(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static double f(double a, int relu) { return relu ? (a > 0 ? a : 0) : tanh(a); }
static double fprime(double h, int relu) { return relu ? (h > 0 ? 1.0 : 0.0) : 1.0 - h * h; }

/* the naive float64 forward; hs as in wsr.h, in place */
static void ref_forward(const float* W, int T, int B, int H, double* hs, int reverse,
                        const ptrdiff_t* lengths, int relu) {
    const ptrdiff_t BH = (ptrdiff_t)B * H;
    for (int i = 0; i < T; i++) {
        const int t = reverse ? T - 1 - i : i;
        double* out = hs + (reverse ? t : t + 1) * BH;
        const double* in = hs + (reverse ? t + 1 : t) * BH;
        for (int b = 0; b < B; b++) {
            for (int j = 0; j < H; j++) {
                double a = out[b * H + j];
                for (int k = 0; k < H; k++) a += in[b * H + k] * W[j * H + k];
                out[b * H + j] = f(a, relu);
            }
            if (lengths != NULL && t >= lengths[b])
                for (int j = 0; j < H; j++)
                    out[b * H + j] = reverse ? hs[T * BH + b * H + j] : 0.0;
        }
    }
}

/* the naive float64 backward; delta as in wsr.h, in place */
static void ref_backward(const float* W, int T, int B, int H, double* delta, const float* hs,
                         int reverse, const ptrdiff_t* lengths, int relu) {
    const ptrdiff_t BH = (ptrdiff_t)B * H;
    for (int i = 0; i < T; i++) {
        const int t = reverse ? i : T - 1 - i;
        double* out = delta + t * BH;
        const double* in = i == 0 ? NULL : delta + (reverse ? t - 1 : t + 1) * BH;
        const float* h = hs + (reverse ? t : t + 1) * BH;
        for (int b = 0; b < B; b++) {
            for (int j = 0; j < H; j++) {
                double a = out[b * H + j];
                if (in != NULL)
                    for (int k = 0; k < H; k++) a += in[b * H + k] * W[k * H + j];
                out[b * H + j] = a * fprime(h[b * H + j], relu);
            }
            if (lengths != NULL && t >= lengths[b])
                for (int j = 0; j < H; j++) out[b * H + j] = 0.0;
        }
    }
}

/* max |got - want| / max(1, max |want|) */
static double rel_err(const float* got, const double* want, size_t n) {
    double err = 0, scale = 1;
    for (size_t i = 0; i < n; i++) {
        const double e = fabs((double)got[i] - want[i]);
        err = e > err || e != e ? e : err;
        scale = fabs(want[i]) > scale ? fabs(want[i]) : scale;
    }
    return err / scale;
}

static void check_case(const char* path, int T, int B, int H, int reverse, int use_lengths,
                       int relu) {
    const size_t BH = (size_t)B * H, n_hs = (size_t)(T + 1) * BH, n_d = (size_t)T * BH;
    float* W = malloc((size_t)H * H * sizeof(float));
    float* pf = malloc(rnn_ext_wsr_packed_size(H) * sizeof(float));
    float* pb = malloc(rnn_ext_wsr_packed_size(H) * sizeof(float));
    float* hs_in = malloc(n_hs * sizeof(float));
    float* hs = malloc(n_hs * sizeof(float));
    float* hs2 = malloc(n_hs * sizeof(float));
    double* hs_ref = malloc(n_hs * sizeof(double));
    float* d_in = malloc(n_d * sizeof(float));
    float* d = malloc(n_d * sizeof(float));
    float* d2 = malloc(n_d * sizeof(float));
    double* d_ref = malloc(n_d * sizeof(double));
    ptrdiff_t* lengths = malloc((size_t)B * sizeof(ptrdiff_t));
    /* spectral radius below 1: a contractive recurrence */
    const double scale = 1.5 / sqrt((double)H);
    for (int i = 0; i < H * H; i++) W[i] = (float)(uniform() * scale);
    for (size_t i = 0; i < n_hs; i++) hs_in[i] = (float)(uniform() * 2.0 + (relu ? 0.5 : 0.0));
    for (size_t i = 0; i < n_d; i++) d_in[i] = (float)uniform();
    for (int b = 0; b < B; b++) lengths[b] = 1 + (ptrdiff_t)((uniform() + 1.0) / 2.0 * T) % T;
    lengths[0] = T;
    const ptrdiff_t* lens = use_lengths ? lengths : NULL;
    rnn_ext_wsr_pack(W, H, pf, pb);

    /* forward */
    memcpy(hs, hs_in, n_hs * sizeof(float));
    for (size_t i = 0; i < n_hs; i++) hs_ref[i] = hs_in[i];
    rnn_ext_wsr_forward(pf, T, B, H, hs, reverse, lens, relu, 1);
    ref_forward(W, T, B, H, hs_ref, reverse, lens, relu);
    const double ef = rel_err(hs, hs_ref, n_hs);
    checks++;
    if (!(ef <= 2e-5)) fail("forward vs reference", path, T, B, H, reverse, use_lengths, relu, ef);
    for (int t = 0; t < T && lens != NULL; t++)
        for (int b = 0; b < B; b++) {
            if (t < lens[b]) continue;
            const float* row = hs + (size_t)(reverse ? t : t + 1) * BH + (size_t)b * H;
            const float* h0 = hs + (size_t)T * BH + (size_t)b * H;
            for (int j = 0; j < H; j++) {
                checks++;
                if (row[j] != (reverse ? h0[j] : 0.0f))
                    fail("forward padded row", path, T, B, H, reverse, 1, relu, row[j]);
            }
        }
    for (int n = 2; n <= 3; n++) {
        memcpy(hs2, hs_in, n_hs * sizeof(float));
        rnn_ext_wsr_forward(pf, T, B, H, hs2, reverse, lens, relu, n);
        checks++;
        if (memcmp(hs2, hs, n_hs * sizeof(float)) != 0)
            fail("forward threads bit-identical", path, T, B, H, reverse, use_lengths, relu, n);
    }

    /* backward, on the forward's states */
    memcpy(d, d_in, n_d * sizeof(float));
    for (size_t i = 0; i < n_d; i++) d_ref[i] = d_in[i];
    rnn_ext_wsr_backward(pb, T, B, H, d, hs, reverse, lens, relu, 1);
    ref_backward(W, T, B, H, d_ref, hs, reverse, lens, relu);
    const double eb = rel_err(d, d_ref, n_d);
    checks++;
    if (!(eb <= 2e-5)) fail("backward vs reference", path, T, B, H, reverse, use_lengths, relu, eb);
    for (int n = 2; n <= 3; n++) {
        memcpy(d2, d_in, n_d * sizeof(float));
        rnn_ext_wsr_backward(pb, T, B, H, d2, hs, reverse, lens, relu, n);
        checks++;
        if (memcmp(d2, d, n_d * sizeof(float)) != 0)
            fail("backward threads bit-identical", path, T, B, H, reverse, use_lengths, relu, n);
    }
    free(W);
    free(pf);
    free(pb);
    free(hs_in);
    free(hs);
    free(hs2);
    free(hs_ref);
    free(d_in);
    free(d);
    free(d2);
    free(d_ref);
    free(lengths);
}

/* W = 0: one forward step is h = tanh(A); at most 7 ulp from libm's tanh */
static void check_tanh(const char* path) {
    enum { H = 37, B = 60 };
    static float W[H * H], pf[64 * H], hs[2 * B * H];
    static float xs[B * H];
    memset(W, 0, sizeof W);
    rnn_ext_wsr_pack(W, H, pf, NULL);
    for (int range = 0; range < 3; range++) {
        const double lo = range == 0 ? -10.0 : range == 1 ? -1.0 : -1e-3;
        for (int i = 0; i < B * H; i++) xs[i] = (float)(lo + (-2.0 * lo) * i / (B * H - 1));
        memset(hs, 0, sizeof hs);
        memcpy(hs + B * H, xs, sizeof xs);
        rnn_ext_wsr_forward(pf, 1, B, H, hs, 0, NULL, 0, 1);
        double worst = 0;
        for (int i = 0; i < B * H; i++) {
            const double exact = tanh((double)xs[i]);
            const float e32 = (float)fabs(exact);
            const double ulp = (double)nextafterf(e32, INFINITY) - (double)e32;
            const double u = fabs((double)hs[B * H + i] - exact) / ulp;
            worst = u > worst || u != u ? u : worst;
        }
        checks++;
        if (!(worst <= 7)) fail("tanh ulp", path, 1, B, H, 0, 0, 0, worst);
    }
}

/* rnn_ext_wsr_gemm_tn on strided operands (lda > M, ldb > N, ldc > N): small
 * integers give exact sums, so the result must equal the int64 reference;
 * the columns of C past N are left alone; a path without the kernel returns
 * 0 and leaves all of C alone. */
static void check_gemm_tn(const char* path, int has_kernel, int K, int M, int N) {
    const ptrdiff_t lda = M + 3, ldb = N + 5, ldc = N + 7;
    float* A = malloc(sizeof(float) * (size_t)(K > 0 ? K : 1) * (size_t)lda);
    float* B = malloc(sizeof(float) * (size_t)(K > 0 ? K : 1) * (size_t)ldb);
    float* C = malloc(sizeof(float) * (size_t)M * (size_t)ldc);
    for (ptrdiff_t i = 0; i < K * lda; i++) A[i] = (float)(int)(4 * uniform());
    for (ptrdiff_t i = 0; i < K * ldb; i++) B[i] = (float)(int)(4 * uniform());
    for (ptrdiff_t i = 0; i < M * ldc; i++) C[i] = -1234.0f;
    const int done = rnn_ext_wsr_gemm_tn(M, N, K, A, lda, B, ldb, C, ldc);
    checks++;
    if (done != has_kernel) fail("gemm_tn taken", path, K, M, N, 0, 0, 0, done);
    double err = 0;
    for (int r = 0; r < M; r++)
        for (int c = 0; c < ldc; c++) {
            double want = -1234.0;
            if (done && c < N) {
                long long sum = 0;
                for (int k = 0; k < K; k++)
                    sum += (long long)A[k * lda + r] * (long long)B[k * ldb + c];
                want = (double)sum;
            }
            const double e = fabs((double)C[r * ldc + c] - want);
            err = e > err || e != e ? e : err;
        }
    if (!(err == 0)) fail("gemm_tn exact", path, K, M, N, 0, 0, 0, err);
    free(A);
    free(B);
    free(C);
}

int main(void) {
    static const char* const paths[] = {"portable", "avx2", "avx512", "neon"};
    static const int Ts[] = {1, 4};
    static const int Bs[] = {1, 3, 8};
    static const int Hs[] = {1, 5, 33, 64, 100};
    int tested = 0;
    for (size_t p = 0; p < sizeof paths / sizeof *paths; p++) {
        if (rnn_ext_wsr_set_path(paths[p]) != 0) continue;
        if (strcmp(rnn_ext_wsr_path(), paths[p]) != 0) {
            printf("FAIL: set_path(%s) but path() is %s\n", paths[p], rnn_ext_wsr_path());
            return 1;
        }
        tested++;
        const int before = failures, checks_before = checks;
        check_tanh(paths[p]);
        for (size_t it = 0; it < sizeof Ts / sizeof *Ts; it++)
            for (size_t ib = 0; ib < sizeof Bs / sizeof *Bs; ib++)
                for (size_t ih = 0; ih < sizeof Hs / sizeof *Hs; ih++)
                    for (int reverse = 0; reverse < 2; reverse++)
                        for (int lens = 0; lens < 2; lens++)
                            for (int relu = 0; relu < 2; relu++)
                                check_case(paths[p], Ts[it], Bs[ib], Hs[ih], reverse, lens, relu);
        /* the paths with weight-gradient tiles (src/wsr_internal.h) */
        const int has_kernel = strcmp(paths[p], "avx2") == 0 || strcmp(paths[p], "avx512") == 0;
        static const int tnK[] = {0, 1, 129, 300}, tnM[] = {1, 7, 9, 65}, tnN[] = {1, 17, 40, 70};
        for (size_t ik = 0; ik < sizeof tnK / sizeof *tnK; ik++)
            for (size_t im = 0; im < sizeof tnM / sizeof *tnM; im++)
                for (size_t in = 0; in < sizeof tnN / sizeof *tnN; in++)
                    check_gemm_tn(paths[p], has_kernel, tnK[ik], tnM[im], tnN[in]);
        printf("path %-8s %5d checks, %d failed\n", paths[p], checks - checks_before,
               failures - before);
    }
    if (rnn_ext_wsr_set_path("no-such-path") != -1) {
        printf("FAIL: set_path accepted an unknown name\n");
        failures++;
    }
#if WSR_AARCH64
    if (rnn_ext_wsr_set_path("neon") != 0) {
        printf("FAIL: no NEON path on aarch64\n");
        failures++;
    }
#endif
    printf("%d paths, %d checks, %d failed\n", tested, checks, failures);
    return failures == 0 && tested > 0 ? 0 : 1;
}
