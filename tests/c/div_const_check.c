/* Exhaustive check of Adam's division by its bias correction without the
 * divider (src/_flat_loops.h, div_const): for every float32 significand of a
 * (all 2^23 values in [1, 2), then a few other binades and the special
 * values) and each divisor b below, div_const(a, b, RN(1/b)) must equal a / b
 * to the bit.  Scaling a by a power of two scales both sides exactly (no
 * overflow or underflow in Adam's range, see _flat_loops.h), so one binade of
 * a is every case for that b.  The domain is Adam's: a = sqrt(v) for a
 * float v >= 0 (0, +inf, NaN, or in [2^-74.5, 2^64)) and b = bc2 in
 * [2^-27, 1], so a / b is 0, +inf, NaN or a normal float (a quotient in the
 * subnormal range would not be correctly rounded this way, and cannot occur).
 *
 * The divisors: the bias corrections Adam actually forms, (float)sqrt(1 -
 * beta2^t), for common beta2 and steps 1..STEPS, and random divisors in
 * (0, 1].  Usage: div_const_check [STEPS [RANDOM]]  (default 400 and 200).
 * Prints one line per group and "div_const: N checks, 0 failed" at the end;
 * exits 1 on the first failure, naming a and b.
 *
 * Build (the flags setup.py gives src/_flat.pyx):
 *   cc -O3 -fno-math-errno -fno-trapping-math -ffp-contract=off [-mfma] \
 *      -Isrc tests/c/div_const_check.c -o div_const_check -lm
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "_flat.h"

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static long long checks;

/* Every significand of a in [1, 2) scaled by 2^shift, for one b. */
static int check_binade(float b, int shift) {
    static float a[1 << 23], got[1 << 23];
    const float y = 1.0f / b;
    const float scale = ldexpf(1.0f, shift);
    for (uint32_t i = 0; i < (1u << 23); i++) a[i] = from_bits(0x3f800000u | i) * scale;
    for (uint32_t i = 0; i < (1u << 23); i++) got[i] = rnn_ext_div_const_f(a[i], b, y);
    for (uint32_t i = 0; i < (1u << 23); i++) {
        const float want = a[i] / b;
        if (to_bits(got[i]) != to_bits(want)) {
            printf("FAILED: a = %a, b = %a: div_const gave %a, a / b = %a\n", (double)a[i],
                   (double)b, (double)got[i], (double)want);
            return 1;
        }
    }
    checks += 1 << 23;
    return 0;
}

static int check_specials(float b) {
    const float y = 1.0f / b;
    /* a is a square root of a float: 0, +inf, NaN, or in [2^-74.5, 2^64) */
    const float specials[] = {0.0f, INFINITY, NAN, 0x1.6a09e6p-75f, 0x1p-63f, 0x1.fffffep63f};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++) {
        const float a = specials[i], got = rnn_ext_div_const_f(a, b, y), want = a / b;
        if (to_bits(got) != to_bits(want) && !(isnan(got) && isnan(want))) {
            printf("FAILED: special a = %a, b = %a: div_const gave %a, a / b = %a\n", (double)a,
                   (double)b, (double)got, (double)want);
            return 1;
        }
        checks++;
    }
    return 0;
}

static int check_divisor(float b) {
    return check_binade(b, 0) || check_specials(b);
}

int main(int argc, char **argv) {
    const int steps = argc > 1 ? atoi(argv[1]) : 400;
    const int random = argc > 2 ? atoi(argv[2]) : 200;
    const double beta2s[] = {0.999, 0.99, 0.98, 0.95, 0.9, 0.5, 0.9999};
    for (size_t k = 0; k < sizeof beta2s / sizeof beta2s[0]; k++) {
        for (int t = 1; t <= steps; t++) {
            const float b = (float)pow(1 - pow(beta2s[k], t), 0.5);
            if (check_divisor(b)) return 1;
        }
        printf("beta2 = %g: steps 1..%d checked\n", beta2s[k], steps);
    }
    /* other binades of a, for a few divisors */
    const int shifts[] = {-70, -20, 1, 20, 60};
    for (size_t k = 0; k < sizeof shifts / sizeof shifts[0]; k++)
        if (check_binade(0.0316069f, shifts[k]) || check_binade(0.7f, shifts[k])) return 1;
    printf("binades 2^-70 .. 2^60 checked\n");
    uint64_t s = 0x9e3779b97f4a7c15u;
    for (int r = 0; r < random; r++) {
        s = s * 6364136223846793005u + 1442695040888963407u;
        /* a significand in [1, 2) and an exponent from 2^-30 to 2^-1: b in [2^-30, 1) */
        const uint32_t exponent = 127 - 1 - (uint32_t)((s >> 40) % 30);
        const float b = from_bits((exponent << 23) | (uint32_t)(s >> 41 & 0x7fffffu));
        if (check_divisor(b)) return 1;
    }
    printf("%d random divisors checked\n", random);
    printf("div_const: %lld checks, 0 failed\n", checks);
    return 0;
}
