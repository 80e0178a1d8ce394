/* Hashing many equal-size blocks per call, salted as dm-verity does it
 * (hash type 1: sha256(salt || block); type 0: sha256(block || salt)),
 * split over pthreads. With SHA-NI, two blocks are hashed at once with
 * interleaved instruction streams. Pure computation: no I/O, no allocation
 * besides thread stacks. */
#include <pthread.h>

#include "bsipatch.h"
#include "bsi_internal.h"

#if defined(__x86_64__) || defined(__i386__)
void bsi_sha256_compress_shani_x2(uint32_t *sa, const uint8_t *pa, uint32_t *sb,
                                  const uint8_t *pb, size_t nblocks);
#define BSI_HAVE_X2 1
#else
#define BSI_HAVE_X2 0
#endif

/* Below this many bytes per thread, extra threads cost more than they save. */
#define MIN_BYTES_PER_THREAD (256u * 1024u)
#define MAX_THREADS 256

typedef struct {
    const uint8_t *data;
    uint64_t first, count;
    uint32_t block_size;
    const uint8_t *salt;
    uint32_t salt_len;
    int salt_after;
    const bsi_sha256_ctx *prefix; /* state after the prefix salt (or empty) */
    uint8_t *out;
    int x2;                       /* use the two-way SHA-NI path */
} job_t;

static void compress2(int x2, bsi_sha256_ctx *a, const uint8_t *pa, bsi_sha256_ctx *b,
                      const uint8_t *pb, size_t n) {
#if BSI_HAVE_X2
    if (x2) {
        bsi_sha256_compress_shani_x2(a->state, pa, b->state, pb, n);
        return;
    }
#endif
    BSI_UNUSED(x2);
    bsi_sha256_compress(a->state, pa, n);
    bsi_sha256_compress(b->state, pb, n);
}

/* bsi_sha256_update on two contexts in the same position with equal-length
 * inputs (so both buffers fill and empty in step). */
static void update2(int x2, bsi_sha256_ctx *a, bsi_sha256_ctx *b, const uint8_t *pa,
                    const uint8_t *pb, size_t len) {
    if (len == 0) return;
    a->count += len;
    b->count += len;
    if (a->buflen) {
        size_t take = 64 - a->buflen;
        if (take > len) take = len;
        memcpy(a->buf + a->buflen, pa, take);
        memcpy(b->buf + b->buflen, pb, take);
        a->buflen += (uint32_t)take;
        b->buflen += (uint32_t)take;
        pa += take;
        pb += take;
        len -= take;
        if (a->buflen < 64) return;
        compress2(x2, a, a->buf, b, b->buf, 1);
        a->buflen = b->buflen = 0;
    }
    size_t whole = len / 64;
    if (whole) {
        compress2(x2, a, pa, b, pb, whole);
        pa += whole * 64;
        pb += whole * 64;
        len -= whole * 64;
    }
    if (len) {
        memcpy(a->buf, pa, len);
        memcpy(b->buf, pb, len);
        a->buflen = b->buflen = (uint32_t)len;
    }
}

/* Two independent streams absorb len bytes each. With SHA-NI and both contexts at the
 * same place in their block, one thread runs the two instruction streams interleaved
 * (each SHA-NI stream waits on its own round latency); results equal two
 * bsi_sha256_update calls. */
BSI_API void bsi_sha256_update_x2(bsi_sha256_ctx *a, const uint8_t *pa, bsi_sha256_ctx *b,
                                  const uint8_t *pb, size_t len) {
    if (a->buflen == b->buflen) {
        update2(BSI_HAVE_X2 && bsi_sha256_simd_active(), a, b, pa, pb, len);
        return;
    }
    bsi_sha256_update(a, pa, len);
    bsi_sha256_update(b, pb, len);
}

/* Padding (FIPS 180-4 5.1.1) of a context into `pad`; returns its blocks. */
static size_t pad_blocks(const bsi_sha256_ctx *c, uint8_t pad[128]) {
    uint64_t bits = c->count * 8;
    size_t n = c->buflen;
    memcpy(pad, c->buf, n);
    pad[n++] = 0x80;
    size_t total = (n <= 56) ? 64 : 128;
    memset(pad + n, 0, total - 8 - n);
    for (int i = 0; i < 8; i++) pad[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    return total / 64;
}

static void final2(int x2, bsi_sha256_ctx *a, bsi_sha256_ctx *b, uint8_t *oa, uint8_t *ob) {
    uint8_t pa[128], pb[128];
    size_t n = pad_blocks(a, pa);
    pad_blocks(b, pb);
    compress2(x2, a, pa, b, pb, n);
    for (int i = 0; i < 8; i++) {
        bsi_store32be(oa + 4 * i, a->state[i]);
        bsi_store32be(ob + 4 * i, b->state[i]);
    }
}

static void hash_range(const job_t *j) {
    uint64_t i = j->first, end = j->first + j->count;
    size_t bs = j->block_size;
    for (; i + 2 <= end; i += 2) {
        bsi_sha256_ctx a = *j->prefix, b = *j->prefix;
        const uint8_t *pa = j->data + i * bs, *pb = pa + bs;
        update2(j->x2, &a, &b, pa, pb, bs);
        if (j->salt_after) update2(j->x2, &a, &b, j->salt, j->salt, j->salt_len);
        final2(j->x2, &a, &b, j->out + i * 32, j->out + (i + 1) * 32);
    }
    if (i < end) {
        bsi_sha256_ctx a = *j->prefix;
        bsi_sha256_update(&a, j->data + i * bs, bs);
        if (j->salt_after) bsi_sha256_update(&a, j->salt, j->salt_len);
        bsi_sha256_final(&a, j->out + i * 32);
    }
}

static void *worker(void *arg) {
    hash_range((const job_t *)arg);
    return NULL;
}

BSI_API int bsi_hash_blocks(const uint8_t *data, uint64_t nblocks, uint32_t block_size,
                            const uint8_t *salt, uint32_t salt_len, int salt_after,
                            uint8_t *out, int threads) {
    uint64_t total;
    if (nblocks == 0) return BSI_OK;
    if (!data || !out || block_size == 0 || (salt_len && !salt)) return BSI_E_INVAL;
    if (bsi_mul_overflow_u64(nblocks, block_size, &total) || total > (uint64_t)SIZE_MAX)
        return BSI_E_INVAL;

    bsi_sha256_ctx prefix;
    bsi_sha256_init(&prefix);
    if (!salt_after && salt_len) bsi_sha256_update(&prefix, salt, salt_len);

    uint64_t t = threads > 0 ? (uint64_t)threads : 1;
    if (t > MAX_THREADS) t = MAX_THREADS;
    uint64_t by_size = total / MIN_BYTES_PER_THREAD;
    if (t > by_size) t = by_size ? by_size : 1;
    if (t > nblocks) t = nblocks;

    job_t jobs[MAX_THREADS];
    pthread_t tids[MAX_THREADS];
    int started[MAX_THREADS];
    int x2 = BSI_HAVE_X2 && bsi_sha256_simd_active();
    uint64_t per = nblocks / t, extra = nblocks % t, first = 0;
    for (uint64_t k = 0; k < t; k++) {
        uint64_t count = per + (k < extra ? 1 : 0);
        jobs[k] = (job_t){data, first, count, block_size, salt, salt_len, salt_after != 0,
                          &prefix, out, x2};
        first += count;
    }
    for (uint64_t k = 1; k < t; k++)
        started[k] = pthread_create(&tids[k], NULL, worker, &jobs[k]) == 0;
    hash_range(&jobs[0]);
    for (uint64_t k = 1; k < t; k++) {
        if (started[k])
            pthread_join(tids[k], NULL);
        else
            hash_range(&jobs[k]); /* could not start a thread: do its share here */
    }
    return BSI_OK;
}
