/* Delta search: block pre-pass, bsdiff-style approximate matching, op encoding.
 *
 * Pre-pass: the block-aligned 4096-byte blocks of old go into a hash table keyed
 * by a 64-bit rolling hash; a window slides over new and every 4096-byte window
 * equal to an old block (at any new offset, found by the hash and confirmed with
 * memcmp) becomes a COPY op, zero windows become ZERO ops, and copies are
 * extended byte by byte into the unmatched gaps around them.
 *
 * Search: the approximate-match search published by Colin Percival with bsdiff
 * ("Naive differences of executable code", 2003), written here from that
 * description: find the longest exact match of new[scan..] in the suffix array
 * of old, accept it when it beats the "same offset as before" alignment by more
 * than 8 bytes, then extend the previous match forward and the new one backward
 * while at least half of the bytes agree (the 50% rule), and resolve overlap.
 * Matched stretches become ADD ops (byte-wise difference against old), the rest
 * INSERT ops. Lookups are skipped where the current alignment evidently holds
 * (see BSI_ALIGN_SKIP / BSI_GOOD_MIN). The index may be sorted in parts (one
 * suffix array each, built in parallel); a lookup takes the longest match of any
 * part, their binary searches running in lockstep. Regions are independent, so
 * Python searches several in parallel against one shared index (every call here
 * releases the GIL).
 *
 * Encoding: ops are cut into segments whose sections (control, diff runs,
 * literals, non-zero diff bytes) are laid out apart so that like data stays
 * together for the compressor; the byte layout is in docs/patch-format.md.
 *
 * Compute only: buffers come from the caller, no I/O, no allocation.
 */
#include "bsipatch.h"
#include "bsi_internal.h"

#define BS BSI_BLOCK_SIZE
/* Lookup skipping in the search (see bsi_diff_search_parts). Measured on libcrypto
 * 3.0.20 -> 3.0.22 with the gaps cut into 1 MiB, 512, 256 and 128 KiB regions:
 * 32 / off (bsdiff's loop plus the old 32-byte skip): 1.04M lookups, patches
 * 192,428 / 192,456 / 192,706 / 192,856 B; 12 / 14 of 16: 341K lookups,
 * 192,426 / 192,452 / 192,786 / 192,886 B. Looser settings (a skip of 1..8, or
 * 12..13 of 16) cut lookups to 75K-360K but keep a wrong alignment in repetitive
 * data: up to 201,918 B, depending on where a region starts. */
#ifndef BSI_ALIGN_SKIP
#define BSI_ALIGN_SKIP 12
#endif
#ifndef BSI_GOOD_WIN
#define BSI_GOOD_WIN 16
#endif
#ifndef BSI_GOOD_MIN
#define BSI_GOOD_MIN 14
#endif

static inline uint64_t ld64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static int is_zero(const uint8_t *p, size_t n) {
    uint64_t acc = 0;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        for (size_t j = 0; j < 64; j += 8) acc |= ld64(p + i + j);
        if (acc) return 0;
    }
    for (; i < n; i++) acc |= p[i];
    return acc == 0;
}

/* At least twice the blocks; small tables are made sparser (up to 16 slots per
 * block, at most 512 KiB) so that a lookup of a window that matches nothing (most
 * of them) usually meets an empty first slot: a branch the CPU predicts. */
BSI_API uint64_t bsi_prepass_table_slots(uint64_t old_size) {
    uint64_t blocks = old_size / BS, slots = 16;
    while (slots < blocks * 2) slots <<= 1;
    while (slots < blocks * 16 && slots < ((uint64_t)64 << 10)) slots <<= 1;
    return slots;
}

BSI_API uint64_t bsi_prepass_max_ops(uint64_t new_size) {
    return 2 * (new_size / BS) + 16;
}

/* Append an op, merging it into the previous one when it continues it. */
static int push_op(bsi_op *ops, uint64_t *n, uint64_t cap, uint32_t kind, uint64_t len,
                   uint64_t old_off) {
    if (len == 0) return 0;
    if (*n > 0) {
        bsi_op *p = &ops[*n - 1];
        if (p->kind == kind &&
            (kind == BSI_OP_ZERO || kind == BSI_OP_GAP || kind == BSI_OP_INSERT ||
             p->old_off + p->len == old_off)) {
            p->len += len;
            return 0;
        }
    }
    if (*n >= cap) return BSI_E_NOMEM;
    ops[*n].len = len;
    ops[*n].old_off = old_off;
    ops[*n].kind = kind;
    ops[*n].reserved = 0;
    (*n)++;
    return 0;
}

/* Rolling polynomial hash of a 4096-byte window, mod 2^64: H = sum b[i] * P^(BS-1-i).
 * Computed fresh with eight independent lanes; rolled by one byte in O(1). */
#define RH_P 0x9E3779B97F4A7C15ULL

static uint64_t rh_pow(uint64_t base, uint64_t e) {
    uint64_t r = 1;
    while (e) {
        if (e & 1) r *= base;
        base *= base;
        e >>= 1;
    }
    return r;
}

static uint64_t rh_fresh(const uint8_t *p, uint64_t p8) {
    uint64_t a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, h = 0;
    for (size_t i = 0; i < BS; i += 8)
        for (int j = 0; j < 8; j++) a[j] = a[j] * p8 + p[i + j];
    for (int j = 0; j < 8; j++) h = h * RH_P + a[j];
    return h;
}

static inline uint64_t rh_mix(uint64_t h) {
    h ^= h >> 31;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 29;
    return h;
}

/* Look up a window hash; return old block index + 1 of an equal block, or 0. */
static uint64_t table_find(const uint64_t *table, uint64_t mask, uint64_t mixed, const uint8_t *old,
                           const uint8_t *blk) {
    uint64_t tag = mixed >> 32, slot = mixed & mask;
    for (;;) {
        uint64_t e = table[slot];
        if (e == 0) return 0;
        if ((e >> 32) == tag) {
            uint64_t ob = (e & 0xFFFFFFFFULL) - 1;
            if (memcmp(old + ob * BS, blk, BS) == 0) return ob + 1;
        }
        slot = (slot + 1) & mask;
    }
}

static int table_args_ok(uint64_t old_size, const uint64_t *table, uint64_t table_slots) {
    return table && table_slots >= bsi_prepass_table_slots(old_size) &&
           !(table_slots & (table_slots - 1)) && old_size / BS < 0xFFFFFFFFULL;
}

BSI_API int bsi_prepass_index(const uint8_t *old, uint64_t old_size, uint64_t first_block,
                              uint64_t end_block, uint64_t *table, uint64_t table_slots,
                              uint8_t *old_claimed) {
    const uint64_t p8 = rh_pow(RH_P, 8), mask = table_slots - 1;
    uint64_t i;
    if ((old_size && !old) || !table_args_ok(old_size, table, table_slots) ||
        first_block > end_block || end_block > old_size / BS)
        return BSI_E_INVAL;
    /* Index the non-zero old blocks; keep the first of identical blocks. */
    for (i = first_block; i < end_block; i++) {
        const uint8_t *blk = old + i * BS;
        if (is_zero(blk, BS)) {
            if (old_claimed) old_claimed[i] = 2;
            continue;
        }
        uint64_t mixed = rh_mix(rh_fresh(blk, p8));
        if (table_find(table, mask, mixed, old, blk)) continue;
        uint64_t slot = mixed & mask;
        while (table[slot]) slot = (slot + 1) & mask;
        table[slot] = ((mixed >> 32) << 32) | (i + 1);
    }
    return 0;
}

BSI_API int64_t bsi_prepass_scan(bsi_prepass_state *st, const uint8_t *old, uint64_t old_size,
                                 const uint8_t *nw, uint64_t new_size, uint64_t end,
                                 const uint64_t *table, uint64_t table_slots,
                                 uint8_t *old_claimed, bsi_op *ops, uint64_t ops_cap) {
    const uint64_t p8 = rh_pow(RH_P, 8), pout = rh_pow(RH_P, BS - 1), mask = table_slots - 1;
    const uint64_t nob = old_size / BS;
    uint64_t n, pos, gap_start, h = 0, zrun = 0;
    int have = 0, rc;
    if (!st || (old_size && !old) || (new_size && !nw) || !ops ||
        !table_args_ok(old_size, table, table_slots) || st->n > ops_cap ||
        st->gap_start > st->pos || st->pos > new_size || end > new_size)
        return BSI_E_INVAL;
    n = st->n;
    pos = st->pos;
    gap_start = st->gap_start;
    /* Slide over new: a 4096-byte window equal to an old block (at any new offset)
     * becomes a COPY, a zero window a ZERO op; unmatched bytes form GAP ops. */
    while (pos < end && pos + BS <= new_size) {
        const uint8_t *win = nw + pos;
        if (n > 0 && ops[n - 1].kind == BSI_OP_COPY && gap_start == pos) {
            uint64_t o = ops[n - 1].old_off + ops[n - 1].len;
            if (o + BS <= old_size && memcmp(old + o, win, BS) == 0) {
                if (old_claimed && o % BS == 0) old_claimed[o / BS] = 1;
                ops[n - 1].len += BS;
                pos += BS;
                gap_start = pos;
                have = 0;
                continue;
            }
        }
        if (!have) {
            h = rh_fresh(win, p8);
            zrun = 0;
            while (zrun < BS && win[BS - 1 - zrun] == 0) zrun++;
            have = 1;
        }
        if (zrun >= BS) {
            if ((rc = push_op(ops, &n, ops_cap, BSI_OP_GAP, pos - gap_start, 0)) < 0) return rc;
            if ((rc = push_op(ops, &n, ops_cap, BSI_OP_ZERO, BS, 0)) < 0) return rc;
            pos += BS;
            gap_start = pos;
            have = 0;
            continue;
        }
        if (nob) {
            uint64_t found = table_find(table, mask, rh_mix(h), old, win);
            if (found) {
                if (old_claimed) old_claimed[found - 1] = 1;
                if ((rc = push_op(ops, &n, ops_cap, BSI_OP_GAP, pos - gap_start, 0)) < 0) return rc;
                if ((rc = push_op(ops, &n, ops_cap, BSI_OP_COPY, BS, (found - 1) * BS)) < 0)
                    return rc;
                pos += BS;
                gap_start = pos;
                have = 0;
                continue;
            }
        }
        if (pos + BS >= new_size) {
            pos = new_size; /* no further full window: the rest is gap */
            break;
        }
        {
            uint8_t in = win[BS], out = win[0];
            h = (h - out * pout) * RH_P + in;
            zrun = in == 0 ? (zrun < BS ? zrun + 1 : BS) : 0;
        }
        pos++;
    }
    if (pos + BS > new_size && pos < new_size && end >= new_size) pos = new_size;
    st->n = n;
    st->pos = pos;
    st->gap_start = gap_start;
    return (int64_t)n;
}

BSI_API int64_t bsi_prepass_zero(bsi_prepass_state *st, uint64_t new_size, uint64_t end,
                                 bsi_op *ops, uint64_t ops_cap) {
    uint64_t n;
    int rc;
    if (!st || !ops || st->n > ops_cap || st->gap_start > st->pos || end > new_size)
        return BSI_E_INVAL;
    n = st->n;
    if (end > st->pos) {
        if ((rc = push_op(ops, &n, ops_cap, BSI_OP_GAP, st->pos - st->gap_start, 0)) < 0) return rc;
        if ((rc = push_op(ops, &n, ops_cap, BSI_OP_ZERO, end - st->pos, 0)) < 0) return rc;
        st->pos = st->gap_start = end;
    }
    st->n = n;
    return (int64_t)n;
}

BSI_API int64_t bsi_prepass_finish(bsi_prepass_state *st, const uint8_t *old, uint64_t old_size,
                                   const uint8_t *nw, uint64_t new_size, bsi_op *ops,
                                   uint64_t ops_cap) {
    uint64_t n, i;
    int rc;
    if (!st || (old_size && !old) || (new_size && !nw) || !ops || st->n > ops_cap ||
        st->gap_start > new_size)
        return BSI_E_INVAL;
    n = st->n;
    if ((rc = push_op(ops, &n, ops_cap, BSI_OP_GAP, new_size - st->gap_start, 0)) < 0) return rc;
    st->pos = st->gap_start = new_size;
    /* Extend copies and zero runs byte by byte into the gaps beside them. */
    {
        uint64_t pos = 0;
        for (i = 0; i < n; i++) {
            bsi_op *g = &ops[i];
            if (g->kind == BSI_OP_GAP) {
                /* forward from the previous op */
                if (i > 0) {
                    bsi_op *p = &ops[i - 1];
                    if (p->kind == BSI_OP_COPY) {
                        uint64_t o = p->old_off + p->len, k = 0;
                        while (k < g->len && o + k < old_size && old[o + k] == nw[pos + k]) k++;
                        p->len += k;
                        g->len -= k;
                        pos += k;
                    } else if (p->kind == BSI_OP_ZERO) {
                        uint64_t k = 0;
                        while (k < g->len && nw[pos + k] == 0) k++;
                        p->len += k;
                        g->len -= k;
                        pos += k;
                    }
                }
                /* backward from the next op */
                if (i + 1 < n && g->len > 0) {
                    bsi_op *q = &ops[i + 1];
                    uint64_t end = pos + g->len, k = 0;
                    if (q->kind == BSI_OP_COPY) {
                        while (k < g->len && k < q->old_off &&
                               old[q->old_off - 1 - k] == nw[end - 1 - k])
                            k++;
                        q->old_off -= k;
                    } else if (q->kind == BSI_OP_ZERO) {
                        while (k < g->len && nw[end - 1 - k] == 0) k++;
                    }
                    q->len += k;
                    g->len -= k;
                }
            }
            pos += g->len;
        }
    }
    /* Drop emptied gaps and merge what now touches. */
    {
        uint64_t w = 0;
        for (i = 0; i < n; i++) {
            if (ops[i].len == 0) continue;
            if (w > 0 && ops[w - 1].kind == ops[i].kind &&
                (ops[i].kind != BSI_OP_COPY ||
                 ops[w - 1].old_off + ops[w - 1].len == ops[i].old_off)) {
                ops[w - 1].len += ops[i].len;
                continue;
            }
            ops[w++] = ops[i];
        }
        n = w;
    }
    st->n = n;
    return (int64_t)n;
}

/* ---- suffix-array search ----------------------------------------------------------- */

typedef struct {
    const uint8_t *idx;
    uint64_t n;
    const int32_t *sa32;
    const int64_t *sa64;
    const uint64_t *bkt; /* 65537 starts of the 2-byte-prefix ranges, or NULL */
} sa_ctx;

BSI_API int bsi_sa_buckets(const uint8_t *idx, uint64_t n, uint64_t *bkt) {
    uint64_t i, sum = 0;
    if (!bkt || (n && !idx)) return BSI_E_INVAL;
    memset(bkt, 0, 65537 * sizeof(uint64_t));
    for (i = 0; i + 1 < n; i++) bkt[((unsigned)idx[i] << 8) | idx[i + 1]]++;
    /* start of key k: all 2-byte suffixes with a smaller key, plus the 1-byte suffix
     * (the last one) when its byte is <= k's first byte: it sorts before them. */
    for (i = 0; i < 65536; i++) {
        uint64_t c = bkt[i];
        bkt[i] = sum + (n > 0 && idx[n - 1] <= (i >> 8) ? 1 : 0);
        sum += c;
    }
    bkt[65536] = n;
    return 0;
}

static inline uint64_t sa_at(const sa_ctx *c, uint64_t i) {
    return c->sa32 ? (uint64_t)(uint32_t)c->sa32[i] : (uint64_t)c->sa64[i];
}

/* Length of the common prefix of a[0..na) and b[0..nb), starting the count at `from`. */
static inline uint64_t match_len(const uint8_t *a, uint64_t na, const uint8_t *b, uint64_t nb,
                                 uint64_t from) {
    uint64_t m = na < nb ? na : nb, i = from;
    while (i + 8 <= m) {
        uint64_t x = ld64(a + i) ^ ld64(b + i);
        if (x) return i + ((uint64_t)__builtin_ctzll(x) >> 3);
        i += 8;
    }
    while (i < m && a[i] == b[i]) i++;
    return i;
}

/* Do a[0..BSI_GOOD_WIN) and b[0..BSI_GOOD_WIN) agree in at least BSI_GOOD_MIN bytes? */
static inline int good_alignment(const uint8_t *a, const uint8_t *b) {
    int m = 0;
    for (int i = 0; i < BSI_GOOD_WIN; i++) m += a[i] == b[i];
    return m >= BSI_GOOD_MIN;
}

/* One binary search for the longest match of s[0..slen) among the suffixes of one
 * part: [lo, hi] brackets the place of s in the suffix order, llo / lhi are the
 * match lengths of the suffixes at lo and hi. */
typedef struct {
    uint64_t lo, hi, llo, lhi;
} sa_range;

static inline void sa_range_init(const sa_ctx *c, const uint8_t *s, uint64_t slen, sa_range *r) {
    uint64_t lo = 0, hi = c->n - 1, plo, phi;
    if (c->bkt && slen >= 2) {
        unsigned k = ((unsigned)s[0] << 8) | s[1];
        uint64_t b0 = c->bkt[k], b1 = k == 65535 ? c->n : c->bkt[k + 1];
        /* bkt[k+1] may include the 1-byte suffix that sorts before key k+1 */
        if (k != 65535 && c->n > 0 && c->idx[c->n - 1] <= ((k + 1) >> 8) &&
            c->idx[c->n - 1] > (k >> 8))
            b1--;
        if (b1 > b0) {
            lo = b0;
            hi = b1 - 1;
        }
    }
    plo = sa_at(c, lo);
    phi = sa_at(c, hi);
    r->lo = lo;
    r->hi = hi;
    r->llo = match_len(c->idx + plo, c->n - plo, s, slen, 0);
    r->lhi = match_len(c->idx + phi, c->n - phi, s, slen, 0);
}

static inline void sa_prefetch(const sa_ctx *c, uint64_t i) {
    if (c->sa32) __builtin_prefetch(&c->sa32[i]);
    else __builtin_prefetch(&c->sa64[i]);
}

/* One halving step; 0 when the range is already down to two neighbours. */
static inline int sa_range_step(const sa_ctx *c, const uint8_t *s, uint64_t slen, sa_range *r) {
    uint64_t mid, pm, skip, l;
    int less;
    if (r->hi - r->lo < 2) return 0;
    mid = r->lo + (r->hi - r->lo) / 2;
    skip = r->llo < r->lhi ? r->llo : r->lhi;
    {
        /* Both possible next midpoints: their SA entries were fetched a step ago, so
         * their suffixes' text (a cache miss each: the lookups' main cost on large
         * indexes) is fetched now, while this step compares; and the SA entries of the
         * four midpoints two steps on. Prefetches only: the result is the same. */
        uint64_t na = mid + (r->hi - mid) / 2, nb = r->lo + (mid - r->lo) / 2;
        sa_prefetch(c, na + (r->hi - na) / 2);
        sa_prefetch(c, mid + (na - mid) / 2);
        sa_prefetch(c, nb + (mid - nb) / 2);
        sa_prefetch(c, r->lo + (nb - r->lo) / 2);
        if (r->hi - r->lo > 4) {
            uint64_t pa = sa_at(c, na), pb = sa_at(c, nb);
            if (pa + skip < c->n) __builtin_prefetch(c->idx + pa + skip);
            if (pb + skip < c->n) __builtin_prefetch(c->idx + pb + skip);
        }
    }
    pm = sa_at(c, mid);
    l = match_len(c->idx + pm, c->n - pm, s, slen, skip);
    /* suffix < s when it differs with a smaller byte or is a proper prefix of s */
    if (l == slen) less = 0;
    else if (l == c->n - pm) less = 1;
    else less = c->idx[pm + l] < s[l];
    if (less) {
        r->lo = mid;
        r->llo = l;
    } else {
        r->hi = mid;
        r->lhi = l;
    }
    return 1;
}

static inline uint64_t sa_range_result(const sa_ctx *c, const sa_range *r, uint64_t *pos) {
    if (r->llo >= r->lhi) {
        *pos = sa_at(c, r->lo);
        return r->llo;
    }
    *pos = sa_at(c, r->hi);
    return r->lhi;
}

static int emit(bsi_op *ops, uint64_t *n, uint64_t cap, uint32_t kind, uint64_t len,
                uint64_t old_off) {
    if (len == 0) return 0;
    if (*n >= cap) return BSI_E_NOMEM;
    ops[*n].len = len;
    ops[*n].old_off = old_off;
    ops[*n].kind = kind;
    ops[*n].reserved = 0;
    (*n)++;
    return 0;
}

/* Longest match of s[0..slen) over all parts; *pos gets its index offset. The
 * parts' binary searches advance in lockstep, so that their cache misses overlap. */
static uint64_t parts_search(const sa_ctx *cs, uint64_t nc, const uint64_t *offs, const uint8_t *s,
                             uint64_t slen, uint64_t *pos) {
    sa_range r[BSI_MAX_SA_PARTS];
    uint64_t best = 0, k, p;
    int more;
    for (k = 0; k < nc; k++)
        if (cs[k].n) sa_range_init(&cs[k], s, slen, &r[k]);
    do {
        more = 0;
        for (k = 0; k < nc; k++)
            if (cs[k].n) more |= sa_range_step(&cs[k], s, slen, &r[k]);
    } while (more);
    *pos = 0;
    for (k = 0; k < nc; k++) {
        uint64_t l;
        if (cs[k].n == 0) continue;
        l = sa_range_result(&cs[k], &r[k], &p);
        if (l > best || k == 0) {
            best = l;
            *pos = offs[k] + p;
        }
    }
    return best;
}

BSI_API int64_t bsi_diff_search(const uint8_t *idx, uint64_t idx_size, const int32_t *sa32,
                                const int64_t *sa64, const uint64_t *bkt, const uint8_t *nw,
                                uint64_t new_size, uint64_t start, uint64_t end, bsi_op *ops,
                                uint64_t ops_cap, uint64_t *stopped) {
    bsi_sa_part part = {0, idx_size, sa32, sa64, bkt};
    return bsi_diff_search_parts(idx, idx_size, &part, 1, nw, new_size, start, end, ops, ops_cap,
                                 stopped);
}

BSI_API int64_t bsi_diff_search_parts(const uint8_t *idx, uint64_t idx_size,
                                      const bsi_sa_part *parts, uint64_t n_parts,
                                      const uint8_t *nw, uint64_t new_size, uint64_t start,
                                      uint64_t end, bsi_op *ops, uint64_t ops_cap,
                                      uint64_t *stopped) {
    return bsi_diff_search_filtered(idx, idx_size, parts, n_parts, nw, new_size, start, end, ops,
                                    ops_cap, stopped, NULL, 0);
}

/* ---- the 8-gram filter ------------------------------------------------------------- */

#define GRAM_MAX_LOG2 29 /* 64 MiB of bits at most */

/* A blocked Bloom filter: the window's hash picks one 64-bit word and two bits in it
 * (one cache line per check; about 5% false positives at 8 bits per window, against
 * 12% for one bit). */
static inline uint64_t gram_hash(const uint8_t *p) { return ld64(p) * 0x9E3779B97F4A7C15ULL; }

static inline uint64_t gram_word(uint64_t h, uint32_t log2) { return h >> (64 - (log2 - 6)); }

static inline uint64_t gram_mask(uint64_t h) {
    return ((uint64_t)1 << (h & 63)) | ((uint64_t)1 << ((h >> 6) & 63));
}

static inline int gram_present(const uint64_t *filter, uint32_t log2, const uint8_t *p) {
    uint64_t h = gram_hash(p), m = gram_mask(h);
    return (filter[gram_word(h, log2)] & m) == m;
}

BSI_API uint32_t bsi_gram_filter_log2(uint64_t n) {
    uint32_t log2 = 12;
    if (n < 4096) return 0;
    while (log2 < GRAM_MAX_LOG2 && ((uint64_t)1 << log2) < 8 * n) log2++;
    return log2;
}

BSI_API int bsi_gram_filter_build(const uint8_t *idx, uint64_t n, uint64_t *filter, uint32_t log2) {
    uint64_t i;
    if (!filter || log2 < 7 || log2 > GRAM_MAX_LOG2 || (n && !idx)) return BSI_E_INVAL;
    for (i = 0; i + 8 <= n; i++) {
        uint64_t h = gram_hash(idx + i);
        /* the word of the window 32 bytes on is fetched meanwhile (each is a cache miss) */
        if (i + 40 <= n) __builtin_prefetch(&filter[gram_word(gram_hash(idx + i + 32), log2)], 1);
        filter[gram_word(h, log2)] |= gram_mask(h);
    }
    return 0;
}

BSI_API int64_t bsi_diff_search_filtered(const uint8_t *idx, uint64_t idx_size,
                                         const bsi_sa_part *parts, uint64_t n_parts,
                                         const uint8_t *nw, uint64_t new_size, uint64_t start,
                                         uint64_t end, bsi_op *ops, uint64_t ops_cap,
                                         uint64_t *stopped, const uint64_t *filter,
                                         uint32_t filter_log2) {
    sa_ctx cs[BSI_MAX_SA_PARTS];
    uint64_t offs[BSI_MAX_SA_PARTS], k;
    uint64_t n = 0;
    int64_t scan, len = 0, pos = 0, lastscan, lastpos = 0, lastoffset = 0;
    const int64_t oldsize = (int64_t)idx_size, e = (int64_t)end;
    int rc;

    if (!stopped || !ops || ops_cap < 4 || start > end || end > new_size || (end && !nw))
        return BSI_E_INVAL;
    if (idx_size > 0 && (!idx || !parts || n_parts == 0 || n_parts > BSI_MAX_SA_PARTS))
        return BSI_E_INVAL;
    if (filter && (filter_log2 < 7 || filter_log2 > GRAM_MAX_LOG2)) return BSI_E_INVAL;
    for (k = 0; idx_size > 0 && k < n_parts; k++) {
        const bsi_sa_part *pt = &parts[k];
        if (!bsi_range_ok(pt->off, pt->len, idx_size) || (pt->len && !pt->sa32 == !pt->sa64) ||
            (pt->sa32 && pt->len > (uint64_t)INT32_MAX))
            return BSI_E_INVAL;
        cs[k].idx = idx + pt->off;
        cs[k].n = pt->len;
        cs[k].sa32 = pt->sa32;
        cs[k].sa64 = pt->sa64;
        cs[k].bkt = pt->bkt;
        offs[k] = pt->off;
    }
    *stopped = start;
    if (start == end) return 0;
    if (idx_size == 0) {
        if ((rc = emit(ops, &n, ops_cap, BSI_OP_INSERT, end - start, 0)) < 0) return rc;
        *stopped = end;
        return (int64_t)n;
    }

    scan = (int64_t)start;
    lastscan = scan;
    while (scan < e) {
        int64_t oldscore = 0, scsc;
        for (scsc = scan += len; scan < e; scan++) {
            uint64_t p;
            /* Suffix-array lookups are the search's main cost (cache misses). Skip
             * them where the current alignment evidently holds: when it matches at
             * least BSI_ALIGN_SKIP bytes at scan (take that exact match), and at a
             * mismatch when it matches at least BSI_GOOD_MIN of the next BSI_GOOD_WIN
             * bytes (a changed displacement inside unchanged code: take no match
             * here, so the stretch stays one ADD). */
            /* the filter word of a place a little ahead loads meanwhile (written out
             * here: GCC drops a helper function whose only effect is a prefetch) */
            if (filter && scan + 32 <= e)
                __builtin_prefetch(&filter[gram_word(gram_hash(nw + scan + 24), filter_log2)]);
            {
                int64_t ao = scan + lastoffset, al = 0;
                if (ao >= 0 && ao < oldsize)
                    al = (int64_t)match_len(idx + ao, (uint64_t)(oldsize - ao), nw + scan,
                                            (uint64_t)(e - scan), 0);
                if (al >= BSI_ALIGN_SKIP) {
                    len = al;
                    pos = ao;
                } else if (ao >= 0 && ao + BSI_GOOD_WIN <= oldsize &&
                           scan + BSI_GOOD_WIN <= e && good_alignment(idx + ao, nw + scan)) {
                    len = al; /* 0 at a mismatch: no match here */
                    pos = ao;
                } else if (filter && scan + 8 <= e && !gram_present(filter, filter_log2, nw + scan)) {
                    /* no 8 bytes here occur anywhere in the index: the longest match is
                     * under 8 bytes, which never wins over the alignment by the 8 bytes
                     * needed; keep the alignment's own (random or new data: most places) */
                    len = al;
                    pos = ao;
                } else {
                    len = (int64_t)parts_search(cs, n_parts, offs, nw + scan,
                                                (uint64_t)(e - scan), &p);
                    pos = (int64_t)p;
                }
            }
            for (; scsc < scan + len; scsc++)
                if (scsc + lastoffset >= 0 && scsc + lastoffset < oldsize &&
                    idx[scsc + lastoffset] == nw[scsc])
                    oldscore++;
            if ((len == oldscore && len != 0) || len > oldscore + 8) break;
            if (scan + lastoffset >= 0 && scan + lastoffset < oldsize &&
                idx[scan + lastoffset] == nw[scan])
                oldscore--;
        }
        if (len != oldscore || scan == e) {
            int64_t s = 0, sf = 0, lenf = 0, lenb = 0, i;
            for (i = 0; lastscan + i < scan && lastpos + i < oldsize;) {
                if (idx[lastpos + i] == nw[lastscan + i]) s++;
                i++;
                if (s * 2 - i > sf * 2 - lenf) {
                    sf = s;
                    lenf = i;
                }
            }
            if (scan < e) {
                int64_t sb = 0;
                s = 0;
                for (i = 1; scan >= lastscan + i && pos >= i; i++) {
                    if (idx[pos - i] == nw[scan - i]) s++;
                    if (s * 2 - i > sb * 2 - lenb) {
                        sb = s;
                        lenb = i;
                    }
                }
            }
            if (lastscan + lenf > scan - lenb) {
                int64_t overlap = (lastscan + lenf) - (scan - lenb), ss = 0, lens = 0;
                s = 0;
                for (i = 0; i < overlap; i++) {
                    if (nw[lastscan + lenf - overlap + i] == idx[lastpos + lenf - overlap + i]) s++;
                    if (nw[scan - lenb + i] == idx[pos - lenb + i]) s--;
                    if (s > ss) {
                        ss = s;
                        lens = i + 1;
                    }
                }
                lenf += lens - overlap;
                lenb -= lens;
            }
            if ((rc = emit(ops, &n, ops_cap, BSI_OP_ADD, (uint64_t)lenf, (uint64_t)lastpos)) < 0)
                return rc;
            if ((rc = emit(ops, &n, ops_cap, BSI_OP_INSERT,
                           (uint64_t)((scan - lenb) - (lastscan + lenf)), 0)) < 0)
                return rc;
            lastscan = scan - lenb;
            lastpos = pos - lenb;
            lastoffset = pos - scan;
            if (n + 2 > ops_cap && scan < e) {
                *stopped = (uint64_t)lastscan;
                return (int64_t)n;
            }
        }
    }
    *stopped = end;
    return (int64_t)n;
}

/* ---- op post-processing ------------------------------------------------------------ */

BSI_API int64_t bsi_ops_remap(const bsi_op *ops, uint64_t n, const uint64_t *map_old,
                              const uint64_t *map_len, uint64_t nmap, bsi_op *out,
                              uint64_t out_cap) {
    uint64_t w = 0, r = 0, rstart = 0; /* current range index and its index-coordinate start */
    uint64_t i;
    if ((n && !ops) || !out || (nmap && (!map_old || !map_len))) return BSI_E_INVAL;
    for (i = 0; i < n; i++) {
        bsi_op op = ops[i];
        if (op.kind != BSI_OP_ADD && op.kind != BSI_OP_COPY) {
            if (w >= out_cap) return BSI_E_NOMEM;
            out[w++] = op;
            continue;
        }
        /* find the range holding op.old_off (ranges are in index order) */
        if (op.old_off < rstart) {
            r = 0;
            rstart = 0;
        }
        while (r < nmap && op.old_off >= rstart + map_len[r]) rstart += map_len[r++];
        while (op.len > 0) {
            uint64_t within, take;
            if (r >= nmap) return BSI_E_RANGE;
            within = op.old_off - rstart;
            take = map_len[r] - within;
            if (take > op.len) take = op.len;
            if (w >= out_cap) return BSI_E_NOMEM;
            out[w].len = take;
            out[w].old_off = map_old[r] + within;
            out[w].kind = op.kind;
            out[w].reserved = 0;
            w++;
            op.len -= take;
            op.old_off += take;
            if (op.len > 0) rstart += map_len[r++];
        }
    }
    return (int64_t)w;
}

BSI_API int64_t bsi_ops_normalize(bsi_op *ops, uint64_t n, const uint8_t *old, uint64_t old_size,
                                  const uint8_t *nw, uint64_t new_size) {
    uint64_t w = 0, i, pos = 0;
    (void)nw;
    (void)old;
    for (i = 0; i < n; i++) {
        bsi_op op = ops[i];
        if (op.kind > BSI_OP_ZERO) return BSI_E_INVAL;
        if (op.len == 0) continue;
        if ((op.kind == BSI_OP_COPY || op.kind == BSI_OP_ADD) &&
            !bsi_range_ok(op.old_off, op.len, old_size))
            return BSI_E_RANGE;
        pos += op.len;
        if (w > 0) {
            bsi_op *p = &ops[w - 1];
            int p_old = p->kind == BSI_OP_COPY || p->kind == BSI_OP_ADD;
            int o_old = op.kind == BSI_OP_COPY || op.kind == BSI_OP_ADD;
            if (p_old && o_old && p->old_off + p->len == op.old_off) {
                if (p->kind != op.kind) p->kind = BSI_OP_ADD;
                p->len += op.len;
                continue;
            }
            if (!p_old && p->kind == op.kind) {
                p->len += op.len;
                continue;
            }
        }
        ops[w++] = op;
    }
    if (pos != new_size) return BSI_E_INVAL;
    return (int64_t)w;
}

static inline uint64_t zigzag(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }

/* ---- packed ops (the search's results while other regions are searched) ---------- */

static inline void pack_varint(uint8_t *out, uint64_t *len, uint64_t v) {
    while (v >= 0x80) {
        out[(*len)++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[(*len)++] = (uint8_t)v;
}

static inline int unpack_varint(const uint8_t *in, uint64_t in_len, uint64_t *pos, uint64_t *v) {
    uint64_t r = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        uint8_t b;
        if (*pos >= in_len) return BSI_E_TRUNCATED;
        b = in[(*pos)++];
        r |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *v = r;
            return 0;
        }
    }
    return BSI_E_CORRUPT;
}

static inline int op_has_old(uint32_t kind) { return kind == BSI_OP_COPY || kind == BSI_OP_ADD; }

BSI_API int64_t bsi_ops_pack(const bsi_op *ops, uint64_t n, uint8_t *out, uint64_t out_cap) {
    uint64_t w = 0, prev_end = 0, i;
    if ((n && !ops) || !out) return BSI_E_INVAL;
    for (i = 0; i < n; i++) {
        const bsi_op *op = &ops[i];
        if (op->kind > BSI_OP_GAP || op->len >> 61) return BSI_E_INVAL;
        if (out_cap - w < BSI_OP_PACKED_MAX) return BSI_E_NOMEM;
        pack_varint(out, &w, op->len << 3 | op->kind);
        if (op_has_old(op->kind)) {
            pack_varint(out, &w, zigzag((int64_t)(op->old_off - prev_end)));
            prev_end = op->old_off + op->len;
        }
    }
    return (int64_t)w;
}

BSI_API int64_t bsi_ops_unpack(const uint8_t *in, uint64_t in_len, bsi_op *ops, uint64_t n) {
    uint64_t pos = 0, prev_end = 0, i, v, z;
    int rc;
    if ((in_len && !in) || (n && !ops)) return BSI_E_INVAL;
    for (i = 0; i < n; i++) {
        if ((rc = unpack_varint(in, in_len, &pos, &v)) < 0) return rc;
        if ((v & 7) > BSI_OP_GAP) return BSI_E_CORRUPT;
        ops[i].kind = (uint32_t)(v & 7);
        ops[i].len = v >> 3;
        ops[i].old_off = 0;
        ops[i].reserved = 0;
        if (op_has_old(ops[i].kind)) {
            if ((rc = unpack_varint(in, in_len, &pos, &z)) < 0) return rc;
            ops[i].old_off = prev_end + (z >> 1 ^ (0 - (z & 1)));
            prev_end = ops[i].old_off + ops[i].len;
        }
    }
    return (int64_t)pos;
}

/* Whether fewer than `min_match` of the n bytes at a and b are equal. */
static int few_equal(const uint8_t *a, const uint8_t *b, uint64_t n, uint64_t min_match) {
    uint64_t eq = 0, i;
    if (n < min_match) return 1;
    for (i = 0; i < n; i++) {
        eq += a[i] == b[i];
        if (eq >= min_match) return 0;
        if (eq + (n - i - 1) < min_match) return 1;
    }
    return 1;
}

/* Whether an ADD op at new offset pos is a stitched match: it jumps at least `far` from
 * prev_end (the old end of the last op with old bytes that stays) and matches fewer
 * than `min_match` of its bytes. */
static int stitched(const bsi_op *op, uint64_t pos, uint64_t prev_end, const uint8_t *old,
                    const uint8_t *nw, uint64_t min_match, uint64_t far) {
    uint64_t jump = op->old_off > prev_end ? op->old_off - prev_end : prev_end - op->old_off;
    return op->kind == BSI_OP_ADD && jump >= far &&
           few_equal(old + op->old_off, nw + pos, op->len, min_match);
}

/* One pass over checked ops: the bytes of the stitched matches, turned into INSERT ops
 * when `convert`. */
static uint64_t prune_pass(bsi_op *ops, uint64_t n, const uint8_t *old, const uint8_t *nw,
                           uint64_t min_match, uint64_t far, int convert, uint64_t *changed) {
    uint64_t i, pos = 0, prev_end = 0, bytes = 0;
    for (i = 0; i < n; i++) {
        bsi_op *op = &ops[i];
        if (op_has_old(op->kind)) {
            if (stitched(op, pos, prev_end, old, nw, min_match, far)) {
                bytes += op->len;
                if (convert) {
                    op->kind = BSI_OP_INSERT;
                    op->old_off = 0;
                    (*changed)++;
                }
            } else {
                prev_end = op->old_off + op->len;
            }
        }
        pos += op->len;
    }
    return bytes;
}

BSI_API int64_t bsi_ops_prune(bsi_op *ops, uint64_t n, const uint8_t *old, uint64_t old_size,
                              const uint8_t *nw, uint64_t new_size, uint64_t min_match,
                              uint64_t far, uint64_t min_bytes) {
    uint64_t i, pos = 0, changed = 0;
    if ((n && !ops) || (old_size && !old) || (new_size && !nw)) return BSI_E_INVAL;
    for (i = 0; i < n; i++) { /* check everything first: the passes trust the ops */
        if (ops[i].kind > BSI_OP_ZERO || !bsi_range_ok(pos, ops[i].len, new_size)) return BSI_E_INVAL;
        if (op_has_old(ops[i].kind) && !bsi_range_ok(ops[i].old_off, ops[i].len, old_size))
            return BSI_E_RANGE;
        pos += ops[i].len;
    }
    if (prune_pass(ops, n, old, nw, min_match, far, 0, &changed) < min_bytes) return 0;
    prune_pass(ops, n, old, nw, min_match, far, 1, &changed);
    return (int64_t)changed;
}

/* ---- segment encoding -------------------------------------------------------------- */

static inline int put_varint(uint8_t *buf, uint64_t cap, uint64_t *len, uint64_t v) {
    if (cap - *len < 10) return BSI_E_NOMEM;
    while (v >= 0x80) {
        buf[(*len)++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    buf[(*len)++] = (uint8_t)v;
    return 0;
}


BSI_API int bsi_seg_encode(bsi_seg_enc *enc, const bsi_op *ops, uint64_t n_ops, const uint8_t *old,
                           uint64_t old_size, const uint8_t *nw, uint64_t new_size,
                           uint64_t max_out, uint8_t *ctrl, uint64_t ctrl_cap, uint8_t *runs,
                           uint64_t runs_cap, uint8_t *nruns, uint64_t nruns_cap, uint8_t *lit,
                           uint64_t lit_cap, uint8_t *diff, uint64_t diff_cap) {
    uint64_t prev_old_end = 0, run = 0;
    int run_nonzero = 0, any_add = 0, rc;
    if (!enc || !ctrl || !runs || !nruns || !lit || !diff || ctrl_cap < 64 || runs_cap < 64 ||
        nruns_cap < 64 ||
        max_out == 0 || diff_cap == 0)
        return BSI_E_INVAL;
    enc->out_len = enc->n_ops = enc->ctrl_len = enc->runs_len = enc->nruns_len = 0;
    enc->lit_len = enc->diff_len = 0;
    for (int k = 0; k < 4; k++) enc->kind_bytes[k] = enc->kind_ops[k] = 0;

    while (enc->op_index < n_ops && enc->out_len < max_out) {
        const bsi_op *op = &ops[enc->op_index];
        uint64_t left = op->len - enc->op_skip, take = max_out - enc->out_len;
        uint64_t npos = enc->new_pos, oo = op->old_off + enc->op_skip;
        if (op->kind > BSI_OP_ZERO || op->len < enc->op_skip) return BSI_E_INVAL;
        if (take > left) take = left;
        if (!bsi_range_ok(npos, take, new_size)) return BSI_E_RANGE;
        if ((op->kind == BSI_OP_COPY || op->kind == BSI_OP_ADD) &&
            !bsi_range_ok(oo, take, old_size))
            return BSI_E_RANGE;
        if (ctrl_cap - enc->ctrl_len < 24) break; /* room for one more control record */
        if (op->kind == BSI_OP_INSERT) {
            if (take > lit_cap - enc->lit_len) take = lit_cap - enc->lit_len;
            if (take == 0) break;
            memcpy(lit + enc->lit_len, nw + npos, take);
            enc->lit_len += take;
        } else if (op->kind == BSI_OP_ADD && enc->dense) {
            const uint8_t *a = nw + npos, *b = old + oo;
            if (take > diff_cap - enc->diff_len) take = diff_cap - enc->diff_len;
            if (take == 0) break;
            for (uint64_t k = 0; k < take; k++) diff[enc->diff_len + k] = (uint8_t)(a[k] - b[k]);
            enc->diff_len += take;
        } else if (op->kind == BSI_OP_ADD) {
            const uint8_t *a = nw + npos, *b = old + oo;
            uint64_t k = 0;
            while (k < take) {
                if (!run_nonzero) {
                    /* zero run: skip equal bytes fast */
                    while (k + 8 <= take && ld64(a + k) == ld64(b + k)) {
                        k += 8;
                        run += 8;
                    }
                    while (k < take && a[k] == b[k]) {
                        k++;
                        run++;
                    }
                    if (k < take) {
                        if (runs_cap - enc->runs_len < 24 || nruns_cap - enc->nruns_len < 24) break;
                        if ((rc = put_varint(runs, runs_cap, &enc->runs_len, run)) < 0) return rc;
                        run = 0;
                        run_nonzero = 1;
                    }
                } else {
                    while (k < take && a[k] != b[k]) {
                        if (enc->diff_len == diff_cap) goto cut; /* diff section full */
                        diff[enc->diff_len++] = (uint8_t)(a[k] - b[k]);
                        k++;
                        run++;
                    }
                    if (k < take) {
                        if (runs_cap - enc->runs_len < 24 || nruns_cap - enc->nruns_len < 24) break;
                        if ((rc = put_varint(nruns, nruns_cap, &enc->nruns_len, run)) < 0) return rc;
                        run = 0;
                        run_nonzero = 0;
                    }
                }
            }
        cut:
            take = k;
            if (take == 0) break;
            any_add = 1;
        }
        /* control record */
        if ((rc = put_varint(ctrl, ctrl_cap, &enc->ctrl_len, (take << 2) | op->kind)) < 0) return rc;
        if (op->kind == BSI_OP_COPY || op->kind == BSI_OP_ADD) {
            if ((rc = put_varint(ctrl, ctrl_cap, &enc->ctrl_len,
                                 zigzag((int64_t)(oo - prev_old_end)))) < 0)
                return rc;
            prev_old_end = oo + take;
        }
        enc->kind_bytes[op->kind] += take;
        enc->kind_ops[op->kind]++;
        enc->n_ops++;
        enc->out_len += take;
        enc->new_pos += take;
        enc->op_skip += take;
        if (enc->op_skip == op->len) {
            enc->op_index++;
            enc->op_skip = 0;
        }
    }
    if (any_add) {
        if (run_nonzero)
            rc = put_varint(nruns, nruns_cap, &enc->nruns_len, run);
        else
            rc = put_varint(runs, runs_cap, &enc->runs_len, run);
        if (rc < 0) return rc;
    }
    return 0;
}
