/* SHA-256 compression with the x86 SHA extensions (SHA-NI), written from
 * Intel's description of SHA256RNDS2 / SHA256MSG1 / SHA256MSG2: the state is
 * kept as two registers ABEF and CDGH, each RNDS2 does two rounds, and the
 * message schedule W[16..63] is computed four words at a time.
 * Compiled with function-level target attributes; only called after
 * bsi_sha256.c has checked CPUID. No I/O, no allocation. */
#include "bsipatch.h"
#include "bsi_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

extern const uint32_t bsi_sha256_k[64];

void bsi_sha256_compress_shani(uint32_t *state, const uint8_t *p, size_t nblocks);
void bsi_sha256_compress_shani_x2(uint32_t *sa, const uint8_t *pa, uint32_t *sb,
                                  const uint8_t *pb, size_t nblocks);

#define BSI_SHANI __attribute__((target("sha,sse4.1,ssse3")))

/* Byte order: message words are big-endian. */
#define BSWAP_MASK _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL)
#define KV(i) _mm_load_si128((const __m128i *)(bsi_sha256_k + 4 * (i)))

/* Four rounds with message words m (W[4i..4i+3]). s0 = ABEF, s1 = CDGH. */
#define ROUNDS4(s0, s1, m, i)                                  \
    do {                                                       \
        __m128i t_ = _mm_add_epi32((m), KV(i));                \
        (s1) = _mm_sha256rnds2_epu32((s1), (s0), t_);          \
        t_ = _mm_shuffle_epi32(t_, 0x0E);                      \
        (s0) = _mm_sha256rnds2_epu32((s0), (s1), t_);          \
    } while (0)

/* Next four schedule words from the previous sixteen (m0 oldest):
 * W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16]. */
#define SCHED(m0, m1, m2, m3)                                                          \
    (m0) = _mm_sha256msg2_epu32(                                                       \
        _mm_add_epi32(_mm_sha256msg1_epu32((m0), (m1)), _mm_alignr_epi8((m3), (m2), 4)), \
        (m3))

/* state[0..7] = A..H  ->  ABEF, CDGH */
#define LOAD_STATE(st, s0, s1)                                              \
    do {                                                                    \
        __m128i abcd_ = _mm_loadu_si128((const __m128i *)(st));             \
        __m128i efgh_ = _mm_loadu_si128((const __m128i *)((st) + 4));       \
        __m128i cdab_ = _mm_shuffle_epi32(abcd_, 0xB1);                     \
        __m128i hgfe_ = _mm_shuffle_epi32(efgh_, 0x1B);                     \
        (s0) = _mm_alignr_epi8(cdab_, hgfe_, 8); /* ABEF */                 \
        (s1) = _mm_blend_epi16(hgfe_, cdab_, 0xF0); /* CDGH */              \
    } while (0)

#define STORE_STATE(st, s0, s1)                                             \
    do {                                                                    \
        __m128i feba_ = _mm_shuffle_epi32((s0), 0x1B);                      \
        __m128i dchg_ = _mm_shuffle_epi32((s1), 0xB1);                      \
        _mm_storeu_si128((__m128i *)(st), _mm_blend_epi16(feba_, dchg_, 0xF0));     \
        _mm_storeu_si128((__m128i *)((st) + 4), _mm_alignr_epi8(dchg_, feba_, 8));  \
    } while (0)

#define LOADMSG(p, k) _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)((p) + 16 * (k))), mask)

BSI_SHANI void bsi_sha256_compress_shani(uint32_t *state, const uint8_t *p, size_t nblocks) {
    const __m128i mask = BSWAP_MASK;
    __m128i s0, s1;
    LOAD_STATE(state, s0, s1);
    while (nblocks--) {
        __m128i a0 = s0, a1 = s1;
        __m128i m0 = LOADMSG(p, 0), m1 = LOADMSG(p, 1), m2 = LOADMSG(p, 2), m3 = LOADMSG(p, 3);
        ROUNDS4(s0, s1, m0, 0);
        ROUNDS4(s0, s1, m1, 1);
        ROUNDS4(s0, s1, m2, 2);
        ROUNDS4(s0, s1, m3, 3);
        for (int i = 4; i < 16; i += 4) {
            SCHED(m0, m1, m2, m3); ROUNDS4(s0, s1, m0, i);
            SCHED(m1, m2, m3, m0); ROUNDS4(s0, s1, m1, i + 1);
            SCHED(m2, m3, m0, m1); ROUNDS4(s0, s1, m2, i + 2);
            SCHED(m3, m0, m1, m2); ROUNDS4(s0, s1, m3, i + 3);
        }
        s0 = _mm_add_epi32(s0, a0);
        s1 = _mm_add_epi32(s1, a1);
        p += 64;
    }
    STORE_STATE(state, s0, s1);
}

/* Two independent messages with the same number of blocks, interleaved so
 * that the latency of one RNDS2 chain hides behind the other. */
BSI_SHANI void bsi_sha256_compress_shani_x2(uint32_t *sa, const uint8_t *pa, uint32_t *sb,
                                            const uint8_t *pb, size_t nblocks) {
    const __m128i mask = BSWAP_MASK;
    __m128i x0, x1, y0, y1;
    LOAD_STATE(sa, x0, x1);
    LOAD_STATE(sb, y0, y1);
    while (nblocks--) {
        __m128i ax0 = x0, ax1 = x1, ay0 = y0, ay1 = y1;
        __m128i m0 = LOADMSG(pa, 0), m1 = LOADMSG(pa, 1), m2 = LOADMSG(pa, 2), m3 = LOADMSG(pa, 3);
        __m128i n0 = LOADMSG(pb, 0), n1 = LOADMSG(pb, 1), n2 = LOADMSG(pb, 2), n3 = LOADMSG(pb, 3);
        ROUNDS4(x0, x1, m0, 0); ROUNDS4(y0, y1, n0, 0);
        ROUNDS4(x0, x1, m1, 1); ROUNDS4(y0, y1, n1, 1);
        ROUNDS4(x0, x1, m2, 2); ROUNDS4(y0, y1, n2, 2);
        ROUNDS4(x0, x1, m3, 3); ROUNDS4(y0, y1, n3, 3);
        for (int i = 4; i < 16; i += 4) {
            SCHED(m0, m1, m2, m3); SCHED(n0, n1, n2, n3);
            ROUNDS4(x0, x1, m0, i); ROUNDS4(y0, y1, n0, i);
            SCHED(m1, m2, m3, m0); SCHED(n1, n2, n3, n0);
            ROUNDS4(x0, x1, m1, i + 1); ROUNDS4(y0, y1, n1, i + 1);
            SCHED(m2, m3, m0, m1); SCHED(n2, n3, n0, n1);
            ROUNDS4(x0, x1, m2, i + 2); ROUNDS4(y0, y1, n2, i + 2);
            SCHED(m3, m0, m1, m2); SCHED(n3, n0, n1, n2);
            ROUNDS4(x0, x1, m3, i + 3); ROUNDS4(y0, y1, n3, i + 3);
        }
        x0 = _mm_add_epi32(x0, ax0); x1 = _mm_add_epi32(x1, ax1);
        y0 = _mm_add_epi32(y0, ay0); y1 = _mm_add_epi32(y1, ay1);
        pa += 64;
        pb += 64;
    }
    STORE_STATE(sa, x0, x1);
    STORE_STATE(sb, y0, y1);
}

#else
/* Not x86: nothing to compile; bsi_sha256.c never calls into this file. */
typedef int bsi_sha256_shani_unused;
#endif
