/* SHA-256 (FIPS 180-4): the portable compression function, the streaming
 * context, and the one-time CPU dispatch to the SHA-NI variant
 * (bsi_sha256_shani.c). Pure computation on memory: no I/O, no allocation. */
#include "bsipatch.h"
#include "bsi_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define BSI_HAVE_X86 1
#else
#define BSI_HAVE_X86 0
#endif

/* Defined in bsi_sha256_shani.c (x86 only); hidden, not part of the cdef. */
void bsi_sha256_compress_shani(uint32_t *state, const uint8_t *blocks, size_t nblocks);

/* FIPS 180-4 section 4.2.2: the first 32 bits of the fractional parts of the
 * cube roots of the first 64 primes. Shared with the SHA-NI code. */
const uint32_t bsi_sha256_k[64] __attribute__((aligned(16))) = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

/* FIPS 180-4 section 5.3.3: initial hash value H(0). */
static const uint32_t sha256_h0[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define CH(x, y, z) (((x) & (y)) ^ (~(x) & (z)))
#define MAJ(x, y, z) (((x) & (y)) ^ ((x) & (z)) ^ ((y) & (z)))
#define BSIG0(x) (ROTR(x, 2) ^ ROTR(x, 13) ^ ROTR(x, 22))
#define BSIG1(x) (ROTR(x, 6) ^ ROTR(x, 11) ^ ROTR(x, 25))
#define SSIG0(x) (ROTR(x, 7) ^ ROTR(x, 18) ^ ((x) >> 3))
#define SSIG1(x) (ROTR(x, 17) ^ ROTR(x, 19) ^ ((x) >> 10))

/* FIPS 180-4 section 6.2.2, one message block at a time. The 64 rounds are
 * unrolled eight at a time with the working variables renamed instead of
 * shifted, and the message schedule kept as a 16-word ring. */
#define RND(a, b, c, d, e, f, g, h, t)                                      \
    do {                                                                    \
        uint32_t t1_ = h + BSIG1(e) + CH(e, f, g) + bsi_sha256_k[t] + W(t); \
        uint32_t t2_ = BSIG0(a) + MAJ(a, b, c);                             \
        d += t1_;                                                           \
        h = t1_ + t2_;                                                      \
    } while (0)

static void sha256_compress_portable(uint32_t *state, const uint8_t *p, size_t nblocks) {
    uint32_t w[16];
    while (nblocks--) {
        uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
        uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
        for (int t = 0; t < 16; t++) w[t] = bsi_load32be(p + 4 * t);
#define W(t) w[(t) & 15]
        for (int t = 0; t < 64; t += 8) {
            if (t >= 16) {
                /* w[i & 15] still holds W[i-16]; W[i-2] may be from this batch */
                for (int i = t; i < t + 8; i++)
                    w[i & 15] += SSIG1(w[(i - 2) & 15]) + w[(i - 7) & 15] + SSIG0(w[(i - 15) & 15]);
            }
            RND(a, b, c, d, e, f, g, h, t + 0);
            RND(h, a, b, c, d, e, f, g, t + 1);
            RND(g, h, a, b, c, d, e, f, t + 2);
            RND(f, g, h, a, b, c, d, e, t + 3);
            RND(e, f, g, h, a, b, c, d, t + 4);
            RND(d, e, f, g, h, a, b, c, t + 5);
            RND(c, d, e, f, g, h, a, b, t + 6);
            RND(b, c, d, e, f, g, h, a, t + 7);
        }
#undef W
        state[0] += a; state[1] += b; state[2] += c; state[3] += d;
        state[4] += e; state[5] += f; state[6] += g; state[7] += h;
        p += 64;
    }
}

/* --- dispatch: detected once, switchable for tests ------------------------ */

static int g_detected = -1;  /* -1 unknown, 0 no SHA-NI, 1 SHA-NI usable */
static int g_enabled = 1;    /* bsi_sha256_simd_enable(0) clears it */

static int detect_shani(void) {
#if BSI_HAVE_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int ssse3 = (c >> 9) & 1, sse41 = (c >> 19) & 1;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    int sha = (b >> 29) & 1;
    return ssse3 && sse41 && sha;
#else
    return 0;
#endif
}

BSI_API int bsi_sha256_simd_available(void) {
    int v = __atomic_load_n(&g_detected, __ATOMIC_RELAXED);
    if (v < 0) {
        v = detect_shani();
        __atomic_store_n(&g_detected, v, __ATOMIC_RELAXED);
    }
    return v;
}

BSI_API int bsi_sha256_simd_active(void) {
    return bsi_sha256_simd_available() && __atomic_load_n(&g_enabled, __ATOMIC_RELAXED);
}

BSI_API int bsi_sha256_simd_enable(int enabled) {
    __atomic_store_n(&g_enabled, enabled ? 1 : 0, __ATOMIC_RELAXED);
    return bsi_sha256_simd_active();
}

BSI_API const char *bsi_sha256_impl(void) {
    return bsi_sha256_simd_active() ? "sha-ni" : "portable";
}

BSI_API void bsi_sha256_compress(uint32_t *state, const uint8_t *blocks, size_t nblocks) {
#if BSI_HAVE_X86
    if (bsi_sha256_simd_active()) {
        bsi_sha256_compress_shani(state, blocks, nblocks);
        return;
    }
#endif
    sha256_compress_portable(state, blocks, nblocks);
}

/* --- streaming context --------------------------------------------------- */

BSI_API void bsi_sha256_init(bsi_sha256_ctx *ctx) {
    memcpy(ctx->state, sha256_h0, sizeof sha256_h0);
    ctx->count = 0;
    ctx->buflen = 0;
}

BSI_API void bsi_sha256_update(bsi_sha256_ctx *ctx, const uint8_t *data, size_t len) {
    if (len == 0) return;
    ctx->count += len;
    if (ctx->buflen) {
        size_t take = 64 - ctx->buflen;
        if (take > len) take = len;
        memcpy(ctx->buf + ctx->buflen, data, take);
        ctx->buflen += (uint32_t)take;
        data += take;
        len -= take;
        if (ctx->buflen < 64) return;
        bsi_sha256_compress(ctx->state, ctx->buf, 1);
        ctx->buflen = 0;
    }
    size_t whole = len / 64;
    if (whole) {
        bsi_sha256_compress(ctx->state, data, whole);
        data += whole * 64;
        len -= whole * 64;
    }
    if (len) {
        memcpy(ctx->buf, data, len);
        ctx->buflen = (uint32_t)len;
    }
}

BSI_API void bsi_sha256_final(bsi_sha256_ctx *ctx, uint8_t *out) {
    uint64_t bits = ctx->count * 8;  /* FIPS 180-4 5.1.1: length modulo 2^64 */
    uint8_t pad[128];
    size_t n = ctx->buflen;
    memcpy(pad, ctx->buf, n);
    pad[n++] = 0x80;
    size_t total = (n <= 56) ? 64 : 128;
    memset(pad + n, 0, total - 8 - n);
    for (int i = 0; i < 8; i++) pad[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    bsi_sha256_compress(ctx->state, pad, total / 64);
    for (int i = 0; i < 8; i++) bsi_store32be(out + 4 * i, ctx->state[i]);
    ctx->buflen = 0;
}

BSI_API void bsi_sha256(const uint8_t *data, size_t len, uint8_t *out) {
    bsi_sha256_ctx ctx;
    bsi_sha256_init(&ctx);
    bsi_sha256_update(&ctx, data, len);
    bsi_sha256_final(&ctx, out);
}
