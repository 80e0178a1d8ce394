/* A fast first alignment of two files: exact anchors joined into aligned ranges.
 *
 * The executable transform (exeplan.py, exemap.py) needs to know roughly where each
 * range of the new file came from in the old one, not a minimal diff. Here about one
 * position in BSI_ALIGN_SAMPLE of old is taken as an anchor candidate, chosen by the
 * content of its BSI_ALIGN_K-byte window (so the same windows are chosen in new),
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
#ifndef BSI_ALIGN_APPROX
#define BSI_ALIGN_APPROX 0
#endif
/* The table slot of the window this many bytes ahead is prefetched (table lookups
 * are cache misses: without it they were three quarters of the time). */
#define PF_AHEAD 64

static inline uint64_t ld64a(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t win_hash(const uint8_t *p) {
#if BSI_ALIGN_K == 16
    uint64_t h = (ld64a(p) * 0x9E3779B97F4A7C15ULL) ^ (ld64a(p + 8) * 0xC2B2AE3D27D4EB4FULL);
#elif BSI_ALIGN_K == 12
    uint64_t h = (ld64a(p) * 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)bsi_load32le(p + 8) * 0xC2B2AE3D27D4EB4FULL);
#elif BSI_ALIGN_K == 8
    uint64_t h = ld64a(p) * 0x9E3779B97F4A7C15ULL;
#else
#error "BSI_ALIGN_K must be 8, 12 or 16"
#endif
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

/* A macro, not a function: GCC drops a static function whose only effect is a
 * prefetch (it counts as having no side effects), call and all. */
#define PREFETCH_SLOT(buf, size, p, table, mask)                                    \
    do {                                                                            \
        if ((p) + PF_AHEAD + AK <= (size)) {                                        \
            uint64_t h_ = win_hash((buf) + (p) + PF_AHEAD);                         \
            if (!(h_ & SAMPLE_MASK)) __builtin_prefetch(&(table)[(h_ >> 3) & (mask)]); \
        }                                                                           \
    } while (0)

static void index_old(const uint8_t *old, uint64_t old_size, uint64_t *table, uint64_t mask) {
    uint64_t p, used = 0, limit = (mask + 1) / 2;
    for (p = 0; p + AK <= old_size; p++) {
        uint64_t h = win_hash(old + p), tag, slot;
        PREFETCH_SLOT(old, old_size, p, table, mask);
        if (h & SAMPLE_MASK) continue;
        tag = h >> 32;
        slot = (h >> 3) & mask;
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

static inline int agree16(const uint8_t *a, const uint8_t *b) {
    int m = 0;
    for (int i = 0; i < 16; i++) m += a[i] == b[i];
    return m;
}

/* Old offset of the unique old window equal to new's window at w, or -1. */
static int64_t find_old(const uint8_t *old, const uint64_t *table, uint64_t mask, uint64_t h,
                        const uint8_t *w) {
    uint64_t tag = h >> 32, slot = (h >> 3) & mask;
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

BSI_API int64_t bsi_align_ranges(const uint8_t *old, uint64_t old_size, const uint8_t *nw,
                                 uint64_t new_size, uint64_t *table, uint64_t table_slots,
                                 uint64_t *out, uint64_t out_cap) {
    uint64_t mask, p = 0, n = 0, cur_s = 0, cur_e = 0;
    int64_t cur_d = 0;
    int have = 0;
    if ((old_size && !old) || (new_size && !nw) || !table || !out ||
        old_size >= DUP - 1 || table_slots < bsi_align_table_slots(old_size) ||
        (table_slots & (table_slots - 1)) || out_cap < new_size / BSI_ALIGN_MIN + 1)
        return BSI_E_INVAL;
    mask = table_slots - 1;
    index_old(old, old_size, table, mask);
    while (p + AK <= new_size) {
        uint64_t h = win_hash(nw + p), e, b, lim;
        int64_t q, d;
        PREFETCH_SLOT(nw, new_size, p, table, mask);
        if (h & SAMPLE_MASK) {
            p++;
            continue;
        }
        q = find_old(old, table, mask, h, nw + p);
        if (q < 0) {
            p++;
            continue;
        }
        d = q - (int64_t)p;
        /* the exact match, both ways (not back past the current range's end) */
        e = AK + fwd_len(old + q + AK, nw + p + AK,
                         (old_size - (uint64_t)q - AK) < (new_size - p - AK)
                             ? old_size - (uint64_t)q - AK
                             : new_size - p - AK);
        lim = have ? p - cur_e : p;
        if (lim > (uint64_t)q) lim = (uint64_t)q;
        for (b = 0; b < lim && old[q - 1 - (int64_t)b] == nw[p - 1 - b]; b++) {
        }
#if BSI_ALIGN_APPROX
        /* then on, 16 bytes at a time, while at least half of them agree (changed
         * references inside code that moved as one piece) */
        while (p + e + 16 <= new_size && (uint64_t)q + e + 16 <= old_size &&
               agree16(old + q + e, nw + p + e) >= 8)
            e += 16;
        while (b + 16 <= lim && agree16(old + q - (int64_t)b - 16, nw + p - b - 16) >= 8) b += 16;
#endif
        if (have && d == cur_d && p - b - cur_e <= BSI_ALIGN_JOIN) {
            cur_e = p + e;
        } else {
            if (have && cur_e - cur_s >= BSI_ALIGN_MIN) {
                out[3 * n] = cur_s;
                out[3 * n + 1] = cur_e - cur_s;
                out[3 * n + 2] = (uint64_t)((int64_t)cur_s + cur_d);
                n++;
            }
            have = 1;
            cur_s = p - b;
            cur_e = p + e;
            cur_d = d;
        }
        p += e;
    }
    if (have && cur_e - cur_s >= BSI_ALIGN_MIN) {
        out[3 * n] = cur_s;
        out[3 * n + 1] = cur_e - cur_s;
        out[3 * n + 2] = (uint64_t)((int64_t)cur_s + cur_d);
        n++;
    }
    return (int64_t)n;
}
