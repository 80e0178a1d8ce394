/* Suffix-array construction by induced sorting (SA-IS).
 *
 * Written for bsipatch from the published algorithm: G. Nong, S. Zhang and
 * W. H. Chan, "Linear Suffix Array Construction by Almost Pure Induced-Sorting"
 * (DCC 2009) / "Two Efficient Algorithms for Linear Time Suffix Array
 * Construction" (IEEE Trans. Computers, 2011). This variant needs no sentinel
 * byte in the text: a virtual sentinel at position n, smaller than every
 * symbol, is assumed throughout.
 *
 * Memory: the caller provides the suffix array (n entries) and a workspace of
 * bsi_sais_workspace_size() bytes; nothing is allocated here. The workspace
 * holds the type bit-vectors of every recursion level and the bucket arrays
 * that do not fit into the free middle part of the suffix array. It is sized
 * for the worst case but usually only a small part of it is touched, so a
 * lazily-zeroed allocation (anonymous mmap) costs little resident memory.
 *
 * The body below is a template compiled twice: once with int32_t indices
 * (n < 2^31) and once with int64_t indices (any n). No I/O here.
 */
#ifndef BSI_SAIS_TEMPLATE

#include "bsipatch.h"
#include "bsi_internal.h"

/* Bump allocator over the caller's workspace. */
typedef struct {
    uint8_t *base;
    size_t size;
    size_t used;
} sais_arena;

static void *arena_take(sais_arena *a, size_t bytes) {
    size_t start = (a->used + 15u) & ~(size_t)15u;
    if (start > a->size || a->size - start < bytes) return NULL;
    a->used = start + bytes;
    return a->base + start;
}

#define TGET(t, i) (((t)[(i) >> 3] >> ((i)&7)) & 1u)
#define TSET(t, i, v)                                                               \
    do {                                                                            \
        if (v) (t)[(i) >> 3] |= (uint8_t)(1u << ((i)&7));                           \
        else (t)[(i) >> 3] &= (uint8_t) ~(1u << ((i)&7));                           \
    } while (0)

#ifndef SAIS_PF
#define SAIS_PF 32 /* induce: prefetch distance in SA entries */
#endif

#define BSI_SAIS_TEMPLATE 1
#define IDX int32_t
#define SFX(name) name##_32
#include "bsi_sais.c"
#undef IDX
#undef SFX
#define IDX int64_t
#define SFX(name) name##_64
#include "bsi_sais.c"
#undef IDX
#undef SFX

/* Worst case: type bits of all levels (n/8 + n/16 + ... < n/4, plus rounding
 * slack per level), level-0 buckets (256 entries) and the buckets of deeper
 * levels when they do not fit into the free part of SA (n/2 + n/4 + ... < n),
 * plus alignment slack. */
BSI_API size_t bsi_sais_workspace_size(uint64_t n, int wide) {
    size_t idx = wide ? 8 : 4;
    if (n > ((uint64_t)1 << 56)) return 0;
    return (size_t)(n / 4 + 64 * 32) + (size_t)(n + 256 + 64 * 2) * idx + 64 * 16;
}

BSI_API int bsi_sais32(const uint8_t *text, int32_t *sa, int64_t n, void *workspace,
                       size_t workspace_size) {
    sais_arena a = {(uint8_t *)workspace, workspace_size, 0};
    if (n < 0 || n > INT32_MAX - 1 || (n > 0 && (!text || !sa))) return BSI_E_INVAL;
    if (workspace_size < bsi_sais_workspace_size((uint64_t)n, 0)) return BSI_E_NOMEM;
    return sais_main_32(text, sa, (int32_t)n, 256, 1, &a);
}

BSI_API int bsi_sais64(const uint8_t *text, int64_t *sa, int64_t n, void *workspace,
                       size_t workspace_size) {
    sais_arena a = {(uint8_t *)workspace, workspace_size, 0};
    if (n < 0 || (n > 0 && (!text || !sa))) return BSI_E_INVAL;
    if (workspace_size < bsi_sais_workspace_size((uint64_t)n, 1)) return BSI_E_NOMEM;
    return sais_main_64(text, sa, n, 256, 1, &a);
}

#else /* ---------------------------------------------------------------- template */

/* Symbol i of the current level's text: bytes at level 0, IDX names deeper. */
static inline IDX SFX(sym)(const void *s, IDX i, int cs) {
    return cs == 1 ? (IDX)((const uint8_t *)s)[i] : ((const IDX *)s)[i];
}

/* Bucket heads (end=0) or one-past-ends (end=1) for an alphabet of k symbols. */
static void SFX(get_buckets)(const void *s, IDX n, IDX *bkt, IDX k, int cs, int end) {
    IDX i, sum = 0;
    for (i = 0; i < k; i++) bkt[i] = 0;
    if (cs == 1) {
        const uint8_t *b = (const uint8_t *)s;
        for (i = 0; i < n; i++) bkt[b[i]]++;
    } else {
        const IDX *w = (const IDX *)s;
        for (i = 0; i < n; i++) bkt[w[i]]++;
    }
    for (i = 0; i < k; i++) {
        sum += bkt[i];
        bkt[i] = end ? sum : sum - bkt[i];
    }
}

static inline int SFX(is_lms)(const uint8_t *t, IDX i) {
    return i > 0 && TGET(t, i) && !TGET(t, i - 1);
}

/* Induce L-type then S-type suffixes from the LMS suffixes already in SA. The
 * loops are written out for byte text (level 0) and for name text (deeper levels)
 * so the hot loop carries no symbol-size branch. */
static void SFX(induce)(const void *s, IDX *sa, IDX n, IDX *bkt, IDX k, int cs,
                        const uint8_t *t) {
    IDX i, j;
    SFX(get_buckets)(s, n, bkt, k, cs, 0);
    /* The virtual sentinel comes first; the suffix before it (n-1) is L-type. */
    sa[bkt[SFX(sym)(s, n - 1, cs)]++] = n - 1;
    if (cs == 1) {
        const uint8_t *b = (const uint8_t *)s;
        /* The text and type bits of the suffix SAIS_PF entries ahead are fetched
         * early (an entry not written yet just makes a useless prefetch). */
        for (i = 0; i < n; i++) {
            if (i + SAIS_PF < n) {
                IDX q = sa[i + SAIS_PF] - 1;
                if (q >= 0) {
                    __builtin_prefetch(&b[q]);
                    __builtin_prefetch(&t[q >> 3]);
                }
            }
            j = sa[i] - 1;
            if (sa[i] > 0 && !TGET(t, j)) sa[bkt[b[j]]++] = j;
        }
        SFX(get_buckets)(s, n, bkt, k, cs, 1);
        for (i = n - 1; i >= 0; i--) {
            if (i >= SAIS_PF) {
                IDX q = sa[i - SAIS_PF] - 1;
                if (q >= 0) {
                    __builtin_prefetch(&b[q]);
                    __builtin_prefetch(&t[q >> 3]);
                }
            }
            j = sa[i] - 1;
            if (sa[i] > 0 && TGET(t, j)) sa[--bkt[b[j]]] = j;
        }
    } else {
        const IDX *w = (const IDX *)s;
        for (i = 0; i < n; i++) {
            if (i + SAIS_PF < n) {
                IDX q = sa[i + SAIS_PF] - 1;
                if (q >= 0) {
                    __builtin_prefetch(&w[q]);
                    __builtin_prefetch(&t[q >> 3]);
                }
            }
            j = sa[i] - 1;
            if (sa[i] > 0 && !TGET(t, j)) sa[bkt[w[j]]++] = j;
        }
        SFX(get_buckets)(s, n, bkt, k, cs, 1);
        for (i = n - 1; i >= 0; i--) {
            if (i >= SAIS_PF) {
                IDX q = sa[i - SAIS_PF] - 1;
                if (q >= 0) {
                    __builtin_prefetch(&w[q]);
                    __builtin_prefetch(&t[q >> 3]);
                }
            }
            j = sa[i] - 1;
            if (sa[i] > 0 && TGET(t, j)) sa[--bkt[w[j]]] = j;
        }
    }
}

/* Sort the suffixes of s[0..n) (alphabet [0,k), symbol size cs) into sa.
 * The bucket array `bkt_in` (k entries) may be NULL: then take it from the arena. */
static int SFX(sais_core)(const void *s, IDX *sa, IDX n, IDX k, int cs, sais_arena *a,
                          IDX *bkt_in) {
    IDX i, j, n1, name, prev, pos;
    uint8_t *t;
    IDX *bkt = bkt_in;
    size_t mark = a->used;

    if (n == 0) return BSI_OK;
    if (n == 1) {
        sa[0] = 0;
        return BSI_OK;
    }
    t = (uint8_t *)arena_take(a, (size_t)n / 8 + 1);
    if (!t) return BSI_E_NOMEM;
    if (!bkt) {
        bkt = (IDX *)arena_take(a, (size_t)k * sizeof(IDX));
        if (!bkt) return BSI_E_NOMEM;
    }

    /* Types: 1 = S, 0 = L. The last symbol is L (it is larger than the sentinel). */
    TSET(t, n - 1, 0);
    for (i = n - 2; i >= 0; i--) {
        IDX c0 = SFX(sym)(s, i, cs), c1 = SFX(sym)(s, i + 1, cs);
        TSET(t, i, c0 < c1 || (c0 == c1 && TGET(t, i + 1)));
    }

    /* Stage 1: bucket the LMS suffixes and induce-sort the LMS substrings. */
    SFX(get_buckets)(s, n, bkt, k, cs, 1);
    for (i = 0; i < n; i++) sa[i] = -1;
    for (i = 1; i < n; i++)
        if (SFX(is_lms)(t, i)) sa[--bkt[SFX(sym)(s, i, cs)]] = i;
    SFX(induce)(s, sa, n, bkt, k, cs, t);

    /* Compact the sorted LMS substrings into sa[0..n1). */
    n1 = 0;
    for (i = 0; i < n; i++)
        if (SFX(is_lms)(t, sa[i])) sa[n1++] = sa[i];

    /* Name the LMS substrings; equal substrings get equal names. */
    for (i = n1; i < n; i++) sa[i] = -1;
    name = 0;
    prev = -1;
    for (i = 0; i < n1; i++) {
        IDX d;
        int differ = 0;
        /* the text, type bits and name slot of the substring SAIS_PF entries ahead
         * load while this one is compared (each is a cache miss otherwise) */
        if (i + SAIS_PF < n1) {
            IDX q = sa[i + SAIS_PF];
            if (cs == 1) __builtin_prefetch((const uint8_t *)s + q);
            else __builtin_prefetch((const IDX *)s + q);
            __builtin_prefetch(&t[q >> 3]);
            __builtin_prefetch(&sa[n1 + q / 2], 1);
        }
        pos = sa[i];
        for (d = 0;; d++) {
            if (prev == -1 || pos + d == n || prev + d == n ||
                SFX(sym)(s, pos + d, cs) != SFX(sym)(s, prev + d, cs) ||
                TGET(t, pos + d) != TGET(t, prev + d)) {
                differ = 1;
                break;
            }
            if (d > 0 && (SFX(is_lms)(t, pos + d) || SFX(is_lms)(t, prev + d))) break;
        }
        if (differ) {
            name++;
            prev = pos;
        }
        sa[n1 + pos / 2] = name - 1;
    }
    for (i = n - 1, j = n - 1; i >= n1; i--)
        if (sa[i] >= 0) sa[j--] = sa[i];

    /* Stage 2: sort the reduced string s1 = sa[n-n1..n) into sa1 = sa[0..n1). */
    {
        IDX *s1 = sa + n - n1, *sa1 = sa;
        if (name < n1) {
            IDX *sub_bkt = NULL;
            int rc;
            /* The middle of sa is free during the recursion: use it for buckets. */
            if (n - 2 * n1 >= name) sub_bkt = sa + n1;
            rc = SFX(sais_core)(s1, sa1, n1, name, (int)sizeof(IDX), a, sub_bkt);
            if (rc < 0) return rc;
        } else {
            for (i = 0; i < n1; i++) sa1[s1[i]] = i;
        }

        /* Stage 3: map back to positions and induce the full order. */
        for (i = 1, j = 0; i < n; i++)
            if (SFX(is_lms)(t, i)) s1[j++] = i;
        for (i = 0; i < n1; i++) sa1[i] = s1[sa1[i]];
    }
    for (i = n1; i < n; i++) sa[i] = -1;
    SFX(get_buckets)(s, n, bkt, k, cs, 1);
    for (i = n1 - 1; i >= 0; i--) {
        j = sa[i];
        sa[i] = -1;
        sa[--bkt[SFX(sym)(s, j, cs)]] = j;
    }
    SFX(induce)(s, sa, n, bkt, k, cs, t);
    a->used = mark;
    return BSI_OK;
}

static int SFX(sais_main)(const uint8_t *text, IDX *sa, IDX n, IDX k, int cs, sais_arena *a) {
    return SFX(sais_core)(text, sa, n, k, cs, a, NULL);
}

#endif
