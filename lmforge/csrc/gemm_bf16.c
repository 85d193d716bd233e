/* y = x . W^T for a few rows of x, in bf16 with fp32 accumulation, on x86 CPUs with AVX512-BF16.
 *
 * Decoding multiplies a handful of rows (one new token per sequence) by each weight matrix. At that
 * size PyTorch's oneDNN call spends most of its ~20 us outside the kernel, so this one is called
 * directly (lmforge/cpu_gemm.py builds and loads it, and checks it against F.linear).
 *
 * Layouts (bf16 as uint16):
 *   x  (M, K) row-major, K even; read as (M, K/2) pairs of bf16.
 *   wp (N32/32, K/2, 32, 2): W (N, K) zero-padded to N32 rows (a multiple of 32), cut into blocks of
 *      32 output columns; within a block, for each pair of inputs k, the 32 columns' (W[n, 2k],
 *      W[n, 2k+1]) pairs side by side: what one vdpbf16ps multiplies by a broadcast pair of x.
 *   y  (M, N) row-major, bf16 (rounded to nearest even, as oneDNN rounds).
 * Each block of 32 columns is one task (OpenMP, the threads PyTorch uses); within it, rows go 8 at a
 * time with 16 fp32 accumulators in registers while the block's weights stay in L1.
 */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

static inline void store_row(uint16_t *y, __m512 lo, __m512 hi, int cols) {
    __m256i a = (__m256i)_mm512_cvtneps_pbh(lo), b = (__m256i)_mm512_cvtneps_pbh(hi);
    if (cols >= 32) {
        _mm256_storeu_si256((__m256i *)y, a);
        _mm256_storeu_si256((__m256i *)(y + 16), b);
    } else {  /* the last, partial block of columns */
        __mmask16 ma = cols >= 16 ? 0xFFFF : (__mmask16)((1u << cols) - 1);
        __mmask16 mb = cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
        _mm256_mask_storeu_epi16(y, ma, a);
        _mm256_mask_storeu_epi16(y + 16, mb, b);
    }
}

/* R (1..8) rows of x times one block of 32 columns. */
#define DEFINE_ROWS(R)                                                                              \
    static void rows_##R(const uint32_t *x, int K2, const uint16_t *w, uint16_t *y, int N, int cols) { \
        __m512 lo[R], hi[R];                                                                        \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) lo[r] = hi[r] = _mm512_setzero_ps();    \
        for (int k = 0; k < K2; k++) {                                                              \
            __m512bh wa = (__m512bh)_mm512_loadu_si512(w + (size_t)k * 64);                         \
            __m512bh wb = (__m512bh)_mm512_loadu_si512(w + (size_t)k * 64 + 32);                    \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                                   \
                __m512bh xr = (__m512bh)_mm512_set1_epi32((int)x[(size_t)r * K2 + k]);              \
                lo[r] = _mm512_dpbf16_ps(lo[r], xr, wa);                                            \
                hi[r] = _mm512_dpbf16_ps(hi[r], xr, wb);                                            \
            }                                                                                       \
        }                                                                                           \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) store_row(y + (size_t)r * N, lo[r], hi[r], cols); \
    }
DEFINE_ROWS(1) DEFINE_ROWS(2) DEFINE_ROWS(3) DEFINE_ROWS(4)
DEFINE_ROWS(5) DEFINE_ROWS(6) DEFINE_ROWS(7) DEFINE_ROWS(8)

typedef void (*rows_fn)(const uint32_t *, int, const uint16_t *, uint16_t *, int, int);
static const rows_fn ROWS[9] = {0, rows_1, rows_2, rows_3, rows_4, rows_5, rows_6, rows_7, rows_8};

void lmforge_gemm_bf16(const uint16_t *x, const uint16_t *wp, uint16_t *y, int M, int N, int K) {
    const int K2 = K / 2, blocks = (N + 31) / 32;
    const uint32_t *xp = (const uint32_t *)x;
#pragma omp parallel for schedule(static)
    for (int j = 0; j < blocks; j++) {
        const uint16_t *w = wp + (size_t)j * K2 * 64;
        const int cols = N - j * 32 < 32 ? N - j * 32 : 32;
        for (int m = 0; m < M; m += 8) {
            const int r = M - m < 8 ? M - m : 8;
            ROWS[r](xp + (size_t)m * K2, K2, w, y + (size_t)m * N + j * 32, N, cols);
        }
    }
}
