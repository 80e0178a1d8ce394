/* A fast first alignment of two files: exact anchors joined into aligned ranges.
 *
 * The executable transform (exeplan.py, exemap.py) needs to know roughly where each
 * range of the new file came from in the old one, not a minimal diff. Here about one
 * position in BSI_ALIGN_SAMPLE of old is taken as an anchor candidate, chosen by the
 * content of its first 8 bytes (so the same windows are chosen in new),
 * and put in a hash table; windows that occur twice in old are dropped (they would
 * anchor anywhere). Sliding over new, a chosen window found in old is confirmed with
 * memcmp and extended both ways as an exact match, and matches that keep the same
 * displacement (old offset - new offset) with at most BSI_ALIGN_JOIN bytes between
 * them are joined into one range: the bytes between them are what changed in place
 * (in code: references whose targets moved). Linear time, one table lookup per
 * chosen window.
 *
 * Memory: the caller's table of bsi_align_table_slots() uint64 entries (zeroed). The
 * table takes at most half its slots, so probes stay short whatever the data. No I/O,
 * no allocation.
 */
#include "bsipatch.h"
#include "bsi_internal.h"

#define AK BSI_ALIGN_K
#define SAMPLE_MASK ((uint64_t)BSI_ALIGN_SAMPLE - 1)
#define DUP 0xFFFFFFFFULL
/* The low bits of a window's hash choose it, bits from SLOT_SHIFT on its table slot and
 * the top 32 bits are its tag. */
#define SLOT_SHIFT 8

static inline uint64_t ld64a(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t win_hash(const uint8_t *p) {
#if BSI_ALIGN_K != 16
#error "win_hash reads 16 bytes"
#endif
    uint64_t h = (ld64a(p) * 0x9E3779B97F4A7C15ULL) ^ (ld64a(p + 8) * 0xC2B2AE3D27D4EB4FULL);
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 32;
    return h;
}

BSI_API uint64_t bsi_align_table_slots(uint64_t old_size) {
    uint64_t want = 2 * (old_size / BSI_ALIGN_SAMPLE) + 64, slots = 1024;
    while (slots < want) slots <<= 1;
    return slots;
}

/* Length of the common prefix of a and b, at most m. */
static inline uint64_t fwd_len(const uint8_t *a, const uint8_t *b, uint64_t m) {
    uint64_t i = 0;
    while (i + 8 <= m) {
        uint64_t x = ld64a(a + i) ^ ld64a(b + i);
        if (x) return i + ((uint64_t)__builtin_ctzll(x) >> 3);
        i += 8;
    }
    while (i < m && a[i] == b[i]) i++;
    return i;
}

/* The chosen windows of a buffer, in order, each hashed once: a few dozen are kept
 * ahead of the consumer and their table slots prefetched (table lookups are cache
 * misses: without the prefetch they were three quarters of the time). */
#define AHEAD 32
typedef struct {
    const uint8_t *buf;
    uint64_t size, next;
    uint64_t pos[AHEAD], hash[AHEAD];
    unsigned head, tail;
} sampler;

/* Whether the window at p is an anchor candidate: about one in BSI_ALIGN_SAMPLE, chosen
 * by a multiplicative hash of its first 8 bytes; the whole window is hashed only for
 * candidates (hashing it at every position was three quarters of the alignment's
 * time). The constant added keeps runs of zero bytes from being candidates
 * everywhere. Measured on libcrypto 3.0.20 -> 3.0.22 (first 4 bytes / 8 / the whole
 * window): x86-64 patch 78,227 / 74,002 / 74,081 bytes, arm64 72,828 / 72,704 /
 * 73,034, the ext4 image set 350,154 / 345,725 / 345,941; 31 ms per alignment
 * instead of 43. */
static inline int candidate(const uint8_t *p) {
    return ((ld64a(p) + 0x7F4A7C159E3779B9ULL) * 0x9E3779B97F4A7C15ULL) >>
               (64 - __builtin_ctz(BSI_ALIGN_SAMPLE)) ==
           0;
}

static inline void sampler_fill(sampler *sm, const uint64_t *table, uint64_t mask) {
    const uint8_t *b = sm->buf;
    uint64_t next = sm->next, last = sm->size >= AK ? sm->size - AK : 0;
    if (sm->size < AK) return;
    while (sm->tail - sm->head < AHEAD && next <= last) {
        if (candidate(b + next)) {
            uint64_t h = win_hash(b + next);
            __builtin_prefetch(&table[(h >> SLOT_SHIFT) & mask]);
            sm->pos[sm->tail % AHEAD] = next;
            sm->hash[sm->tail % AHEAD] = h;
            sm->tail++;
        }
        next++;
    }
    sm->next = next;
}

/* The next chosen window at or after `from`: 1 with its position and hash, or 0. */
static inline int sampler_next(sampler *sm, const uint64_t *table, uint64_t mask, uint64_t from,
                               uint64_t *pos, uint64_t *hash) {
    if (from > sm->next) { /* jumped past everything queued */
        sm->head = sm->tail;
        sm->next = from;
    }
    for (;;) {
        sampler_fill(sm, table, mask);
        if (sm->head == sm->tail) return 0;
        *pos = sm->pos[sm->head % AHEAD];
        *hash = sm->hash[sm->head % AHEAD];
        sm->head++;
        if (*pos >= from) return 1;
    }
}

static void index_old(const uint8_t *old, uint64_t old_size, uint64_t *table, uint64_t mask) {
    uint64_t p, h, used = 0, limit = (mask + 1) / 2;
    sampler sm = {old, old_size, 0, {0}, {0}, 0, 0};
    while (sampler_next(&sm, table, mask, 0, &p, &h)) {
        uint64_t tag = h >> 32, slot = (h >> SLOT_SHIFT) & mask;
        for (;;) {
            uint64_t e = table[slot];
            if (e == 0) {
                if (used < limit) {
                    table[slot] = (tag << 32) | (p + 1);
                    used++;
                }
                break;
            }
            if ((e >> 32) == tag) {
                uint64_t q = e & 0xFFFFFFFFULL;
                if (q == DUP || memcmp(old + q - 1, old + p, AK) == 0) {
                    table[slot] = (tag << 32) | DUP;
                    break;
                }
            }
            slot = (slot + 1) & mask;
        }
    }
}

/* Old offset of the unique old window equal to new's window at w, or -1. */
static int64_t find_old(const uint8_t *old, const uint64_t *table, uint64_t mask, uint64_t h,
                        const uint8_t *w) {
    uint64_t tag = h >> 32, slot = (h >> SLOT_SHIFT) & mask;
    for (;;) {
        uint64_t e = table[slot];
        if (e == 0) return -1;
        if ((e >> 32) == tag) {
            uint64_t q = e & 0xFFFFFFFFULL;
            if (q == DUP) return -1;
            if (memcmp(old + q - 1, w, AK) == 0) return (int64_t)(q - 1);
        }
        slot = (slot + 1) & mask;
    }
}

static inline void put_range(uint64_t *out, uint64_t *n, uint64_t s, uint64_t e, int64_t d) {
    if (e - s < BSI_ALIGN_MIN) return;
    out[3 * *n] = s;
    out[3 * *n + 1] = e - s;
    out[3 * *n + 2] = (uint64_t)((int64_t)s + d);
    (*n)++;
}

BSI_API int64_t bsi_align_ranges(const uint8_t *old, uint64_t old_size, const uint8_t *nw,
                                 uint64_t new_size, uint64_t *table, uint64_t table_slots,
                                 uint64_t *out, uint64_t out_cap) {
    uint64_t mask, p = 0, h, n = 0, cur_s = 0, cur_e = 0;
    int64_t cur_d = 0;
    int have = 0;
    sampler sm = {nw, new_size, 0, {0}, {0}, 0, 0};
    if ((old_size && !old) || (new_size && !nw) || !table || !out || old_size >= DUP - 1 ||
        table_slots < bsi_align_table_slots(old_size) || (table_slots & (table_slots - 1)) ||
        out_cap < new_size / BSI_ALIGN_MIN + 1)
        return BSI_E_INVAL;
    mask = table_slots - 1;
    index_old(old, old_size, table, mask);
    while (sampler_next(&sm, table, mask, p, &p, &h)) {
        uint64_t e, b, lim, m;
        int64_t q = find_old(old, table, mask, h, nw + p), d;
        if (q < 0) {
            p++;
            continue;
        }
        d = q - (int64_t)p;
        /* the exact match, both ways (not back past the current range's end) */
        m = old_size - (uint64_t)q - AK;
        if (m > new_size - p - AK) m = new_size - p - AK;
        e = AK + fwd_len(old + q + AK, nw + p + AK, m);
        lim = have ? p - cur_e : p;
        if (lim > (uint64_t)q) lim = (uint64_t)q;
        for (b = 0; b < lim && old[q - 1 - (int64_t)b] == nw[p - 1 - b]; b++) {
        }
        if (have && d == cur_d && p - b - cur_e <= BSI_ALIGN_JOIN) {
            cur_e = p + e;
        } else {
            if (have) put_range(out, &n, cur_s, cur_e, cur_d);
            have = 1;
            cur_s = p - b;
            cur_e = p + e;
            cur_d = d;
        }
        p += e;
    }
    if (have) put_range(out, &n, cur_s, cur_e, cur_d);
    return (int64_t)n;
}

/* ---- the heaviest monotone chain of map pieces (exemap.py) ------------------------ */

/* Index of the first of keys[0..nk) that is >= x. */
static uint64_t lower_bound(const int64_t *keys, uint64_t nk, int64_t x) {
    uint64_t lo = 0, hi = nk;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (keys[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* (w, j) > (bw, bj) as Python compares the tuples. */
static inline int better(uint64_t w, int64_t j, uint64_t bw, int64_t bj) {
    return w > bw || (w == bw && j > bj);
}

BSI_API int64_t bsi_map_chain(const uint64_t *va, const uint64_t *len, const int64_t *key,
                              uint64_t n, const int64_t *keys, uint64_t nk, uint64_t *tree_w,
                              int64_t *tree_j, uint64_t *weight, int64_t *prev, int64_t *chain) {
    uint64_t i, pend = 0, best_i = 0, m = 0;
    if (n == 0) return 0;
    if (!va || !len || !key || !keys || !tree_w || !tree_j || !weight || !prev || !chain ||
        nk == 0 || nk > n)
        return BSI_E_INVAL;
    for (i = 0; i <= nk; i++) {
        tree_w[i] = 0;
        tree_j[i] = -1;
    }
    for (i = 0; i < n; i++) {
        uint64_t pos, bw = 0, k;
        int64_t bj = -1;
        if (i && va[i] < va[i - 1]) return BSI_E_INVAL;
        if (va[pend] < va[i]) { /* pieces with a smaller old address become predecessors */
            for (k = pend; k < i; k++) {
                uint64_t at = lower_bound(keys, nk, key[k]);
                if (at >= nk || keys[at] != key[k]) return BSI_E_INVAL;
                for (pos = at + 1; pos <= nk; pos += pos & (0 - pos))
                    if (better(weight[k], (int64_t)k, tree_w[pos], tree_j[pos])) {
                        tree_w[pos] = weight[k];
                        tree_j[pos] = (int64_t)k;
                    }
            }
            pend = i;
        }
        for (pos = lower_bound(keys, nk, key[i]); pos > 0; pos -= pos & (0 - pos))
            if (better(tree_w[pos], tree_j[pos], bw, bj)) {
                bw = tree_w[pos];
                bj = tree_j[pos];
            }
        weight[i] = bw + len[i];
        prev[i] = bj;
        if (weight[i] > weight[best_i]) best_i = i;
    }
    for (int64_t j = (int64_t)best_i; j >= 0; j = prev[j]) chain[m++] = j;
    return (int64_t)m;
}
