/* The executable reference transform: predict how an executable's references move.
 *
 * Given the old image, a list of regions (where code, relocation tables, symbol
 * tables and unwind tables lie in it) and a map saying where each range of old
 * virtual addresses went in the new image, rewrite every reference found in the
 * regions to the value it would have if only addresses had moved: a call from A to B
 * becomes a call from map(A) to map(B). The diff then compares this predicted old
 * image with the new one, so references that moved as predicted cost nothing.
 *
 * The transform reads only the old image, the regions and the map: the applier
 * computes exactly the same bytes from the same inputs, so no decision needs to be
 * right for the patch to be exact; a wrong guess (a byte pattern taken for an
 * instruction) only costs patch size. References are found by scanning, in the manner
 * of Zucchini's rel32 finders, not by full disassembly: x86-64 opcodes that carry a
 * rel32 or a RIP-relative disp32 whose target lies inside the image, every AArch64
 * PC-relative instruction form.
 *
 * Every region and map entry comes from a patch: all are checked (bsi_exe_check)
 * before anything is read. Pure compute on caller memory: no I/O, no allocation.
 */
#include "bsipatch.h"
#include "bsi_internal.h"

typedef struct {
    uint8_t *buf;
    uint64_t size;
    const bsi_exe_region *reg;
    uint64_t nreg;
    const bsi_exe_map *map;
    uint64_t nmap;
    uint64_t lo, hi;   /* virtual address span of the image (LOAD regions, bss included) */
    uint64_t finger;   /* map_src: the map entry of the last reference address looked up */
    const uint32_t *index; /* or NULL: index[b] = map entries with old_va <= lo + (b << shift) */
    unsigned shift;
    uint64_t *stats;
    const bsi_exe_region *avoid; /* eager RELA pass: windowed regions (sorted, disjoint) */
    uint64_t n_avoid, conflicts;
} exe_ctx;

static inline int64_t sext(uint64_t v, unsigned bits) {
    uint64_t m = (uint64_t)1 << (bits - 1);
    v &= (m << 1) - 1;
    return (int64_t)((v ^ m) - m);
}

/* 1 + the index of the last map entry with old_va <= x, or 0 when there is none.
 * Branch-free (the comparisons on addresses taken from code are unpredictable), with
 * the next two probes prefetched: the map of a large executable (hundreds of thousands
 * of entries) does not fit in the caches, and this lookup was half of the transform. */
static uint64_t map_entry(const bsi_exe_map *map, uint64_t n, uint64_t x) {
    const bsi_exe_map *base = map;
    if (n == 0 || map[0].old_va > x) return 0;
    while (n > 1) { /* base[0].old_va <= x; the answer lies in base[0 .. n) */
        uint64_t half = n / 2;
        __builtin_prefetch(&base[half / 2]);
        __builtin_prefetch(&base[half + half / 2]);
        base = base[half].old_va <= x ? base + half : base;
        n -= half;
    }
    return (uint64_t)(base - map) + 1;
}

static int map_hit(const bsi_exe_map *m, uint64_t x, uint64_t *out) {
    if (x - m->old_va >= m->len) return 0;
    *out = x + (uint64_t)m->delta;
    return 1;
}

/* 1 + the index of the last map entry with old_va <= x, or 0 (map_entry). With the
 * index, the search covers only the entries between two neighbouring bucket starts. */
static uint64_t map_find(const exe_ctx *c, uint64_t x) {
    uint64_t bkt, a, b;
    if (!c->index || x < c->lo || x >= c->hi) return map_entry(c->map, c->nmap, x);
    bkt = (x - c->lo) >> c->shift, a = c->index[bkt], b = c->index[bkt + 1];
    while (a < b) { /* entries before a have old_va <= x, those from b on above it */
        uint64_t mid = a + (b - a) / 2;
        if (c->map[mid].old_va <= x)
            a = mid + 1;
        else
            b = mid;
    }
    return a;
}

/* New address of old virtual address x, or 0 when the map does not cover it. */
static int map_va(const exe_ctx *c, uint64_t x, uint64_t *out) {
    uint64_t k = map_find(c, x);
    return k ? map_hit(&c->map[k - 1], x, out) : 0;
}

/* Fill the index over [lo, hi): bucket b starts at lo + (b << shift); index[b] counts
 * the map entries with old_va <= that start (the last bucket's end: all up to hi). */
static void build_index(exe_ctx *c, uint32_t *index) {
    uint64_t span = c->hi - c->lo, k = 0, nb;
    unsigned shift = 0;
    while ((span >> shift) >= BSI_EXE_INDEX_LEN - 2) shift++;
    nb = (span >> shift) + 1; /* buckets; nb + 1 <= BSI_EXE_INDEX_LEN entries */
    for (uint64_t b = 0; b <= nb; b++) {
        uint64_t start = b <= (span >> shift) ? c->lo + (b << shift) : c->hi;
        while (k < c->nmap && c->map[k].old_va <= start) k++;
        index[b] = (uint32_t)k;
    }
    c->index = index, c->shift = shift;
}

/* map_va for the address of a reference itself: scans go forward through a region, so
 * the entry is almost always the last one found or just after it (a finger; the same
 * answer as map_va, found without a search). */
static int map_src(exe_ctx *c, uint64_t x, uint64_t *out) {
    uint64_t k = c->finger;
    if (k < c->nmap && c->map[k].old_va <= x) {
        for (int step = 0; step < 4; step++) {
            if (k + 1 >= c->nmap || c->map[k + 1].old_va > x) {
                c->finger = k;
                return map_hit(&c->map[k], x, out);
            }
            k++;
        }
    }
    k = map_find(c, x);
    if (!k) return 0;
    c->finger = k - 1;
    return map_hit(&c->map[k - 1], x, out);
}

static int in_image(const exe_ctx *c, uint64_t va) { return va >= c->lo && va < c->hi; }

/* File offset of virtual address va (n bytes) in a LOAD region, or 0. */
static int va_to_off(const exe_ctx *c, uint64_t va, uint64_t n, uint64_t *off) {
    for (uint64_t i = 0; i < c->nreg; i++) {
        const bsi_exe_region *r = &c->reg[i];
        if (r->kind != BSI_EXE_LOAD || va < r->va) continue;
        if (va - r->va <= r->len && r->len - (va - r->va) >= n) {
            *off = r->off + (va - r->va);
            return 1;
        }
    }
    return 0;
}

/* The new pc-relative 32-bit value of a reference at virtual address vq (relative to
 * vq + 4) to target: 1 and *out, or 0 when the map does not cover both or it does not fit. */
static int rel32_value(exe_ctx *c, uint64_t vq, uint64_t target, uint32_t *out) {
    uint64_t nq, nt;
    int64_t v;
    if (!map_src(c, vq, &nq) || !map_va(c, target, &nt)) return 0;
    v = (int64_t)(nt - (nq + 4));
    if (v < INT32_MIN || v > INT32_MAX) return 0;
    *out = (uint32_t)(int32_t)v;
    return 1;
}

/* Where a scan writes: dst holds the bytes [wa, wb) of the region (positions relative to
 * the region's start); bytes written outside that span are dropped. The whole-image
 * transform writes into the region itself (wa = 0, wb = its length). */
typedef struct {
    uint8_t *dst;
    uint64_t wa, wb;
} sink;

static void put_bytes(const sink *s, uint64_t at, const uint8_t *v, unsigned n) {
    if (at >= s->wa && at + n <= s->wb) {
        memcpy(s->dst + (at - s->wa), v, n);
        return;
    }
    for (unsigned k = 0; k < n; k++)
        if (at + k >= s->wa && at + k < s->wb) s->dst[at + k - s->wa] = v[k];
}

static void put32(const sink *s, uint64_t at, uint32_t v) {
    uint8_t b[4];
    bsi_store32le(b, v);
    put_bytes(s, at, b, 4);
}

static void put64(const sink *s, uint64_t at, uint64_t v) {
    uint8_t b[8];
    bsi_store64le(b, v);
    put_bytes(s, at, b, 8);
}

/* Checkpoints of an x86-64 scan (windows restart it there). The scan is a walk over
 * positions i; after a reference found at i it goes on at q + 4, past the 4 bytes it
 * rewrote, so it never reads a byte it wrote and where it goes depends only on the
 * original bytes. Checkpoint j is the first position the walk visits at or after
 * T(j) = j * 2^BSI_EXE_CK_SHIFT - 16 (T(0) = 0): a walk restarted there visits the
 * same positions from then on, and every write into bytes from j * 2^CK_SHIFT on comes
 * from a position at or after it (a reference read at i lies within i + 1 .. i + 10). */
typedef struct {
    uint8_t *ck; /* checkpoint j - T(j), 0 .. 9 */
    uint64_t *known, cap;
} ck_rec;

static uint64_t ck_target(uint64_t j) { return j ? (j << BSI_EXE_CK_SHIFT) - 16 : 0; }

/* The walk jumps from i to e: targets up to i were visited, those in (i, e) skipped. */
static void ck_jump(ck_rec *k, uint64_t i, uint64_t e) {
    while (*k->known < k->cap && ck_target(*k->known) < e) {
        uint64_t t = ck_target(*k->known);
        k->ck[(*k->known)++] = (uint8_t)(t <= i ? 0 : e - t);
    }
}

static void ck_end(ck_rec *k, uint64_t i) {
    while (*k->known < k->cap && ck_target(*k->known) <= i) {
        k->ck[(*k->known)++] = 0;
    }
}

/* ---- x86-64 --------------------------------------------------------------------- */

/* One-byte opcodes that take a ModRM byte and are common with a memory operand. */
static const uint8_t X86_MODRM1[256] = {
    [0x00] = 1, [0x01] = 1, [0x02] = 1, [0x03] = 1, [0x08] = 1, [0x09] = 1, [0x0A] = 1,
    [0x0B] = 1, [0x10] = 1, [0x11] = 1, [0x12] = 1, [0x13] = 1, [0x18] = 1, [0x19] = 1,
    [0x1A] = 1, [0x1B] = 1, [0x20] = 1, [0x21] = 1, [0x22] = 1, [0x23] = 1, [0x28] = 1,
    [0x29] = 1, [0x2A] = 1, [0x2B] = 1, [0x30] = 1, [0x31] = 1, [0x32] = 1, [0x33] = 1,
    [0x38] = 1, [0x39] = 1, [0x3A] = 1, [0x3B] = 1, [0x63] = 1, [0x69] = 1, [0x6B] = 1,
    [0x80] = 1, [0x81] = 1, [0x83] = 1, [0x84] = 1, [0x85] = 1, [0x86] = 1, [0x87] = 1,
    [0x88] = 1, [0x89] = 1, [0x8A] = 1, [0x8B] = 1, [0x8D] = 1, [0xC0] = 1, [0xC1] = 1,
    [0xC6] = 1, [0xC7] = 1, [0xD0] = 1, [0xD1] = 1, [0xD2] = 1, [0xD3] = 1, [0xD8] = 1,
    [0xD9] = 1, [0xDA] = 1, [0xDB] = 1, [0xDC] = 1, [0xDD] = 1, [0xDE] = 1, [0xDF] = 1,
    [0xF6] = 1, [0xF7] = 1, [0xFE] = 1, [0xFF] = 1,
};

/* Two-byte (0F xx) opcodes that take a ModRM byte (SSE moves and arithmetic, movzx,
 * cmov, prefetch, nop ...); 0F 38 / 0F 3A escapes are handled separately. */
static int x86_modrm2(uint8_t op) {
    if (op >= 0x10 && op <= 0x18) return 1;
    if (op == 0x1F || (op >= 0x28 && op <= 0x2F) || (op >= 0x40 && op <= 0x7F)) return 1;
    if (op == 0xAF || op == 0xB0 || op == 0xB1 || (op >= 0xB6 && op <= 0xBF)) return 1;
    if (op == 0xC2 || op == 0xC6 || op >= 0xD0) return op != 0xFF;
    return 0;
}

/* First bytes that start a candidate whatever follows (call/jmp, 0F escapes, VEX, EVEX). */
static const uint8_t X86_FIRST[256] = {
    [0xE8] = 1, [0xE9] = 1, [0x0F] = 1, [0xC4] = 1, [0xC5] = 1, [0x62] = 1,
};

/* Walk x86-64 code region r, whose original bytes are p[0 .. r->len), from position i
 * (one the whole walk visits) until i >= stop. Rewritten references go to out, or
 * nowhere (out NULL: only the walk, no map lookups). k (or NULL) records checkpoints.
 * Returns where the walk stopped. */
static uint64_t x86_run(exe_ctx *c, const bsi_exe_region *r, const uint8_t *p, uint64_t i,
                        uint64_t stop, const sink *out, ck_rec *k) {
    uint64_t n = r->len, end = n >= 5 ? n - 4 : 0;
    if (end > stop) end = stop;
    while (i < end) {
        uint64_t q = 0;
        int branch = 0;
        uint8_t b = p[i];
        /* Most bytes start no candidate: one test without branches on the data tells
         * (a byte-by-byte chain of tests mispredicts on code: libcrypto 32 -> 11 ms) */
        if (!(X86_FIRST[b] | (X86_MODRM1[b] & ((p[i + 1] & 0xC7) == 0x05)))) {
            i++;
            continue;
        }
        if (b == 0xE8 || b == 0xE9) {
            q = i + 1;
            branch = 1;
        } else if (b == 0x0F && i + 6 <= n && (p[i + 1] & 0xF0) == 0x80) {
            q = i + 2;
            branch = 1;
        } else if (X86_MODRM1[b] && (p[i + 1] & 0xC7) == 0x05) {
            q = i + 2;
        } else if (b == 0x0F && i + 7 <= n) {
            if ((p[i + 1] == 0x38 || p[i + 1] == 0x3A) && (p[i + 3] & 0xC7) == 0x05)
                q = i + 4;
            else if (x86_modrm2(p[i + 1]) && (p[i + 2] & 0xC7) == 0x05)
                q = i + 3;
        } else if (b == 0xC5 && i + 8 <= n && (p[i + 3] & 0xC7) == 0x05) {
            q = i + 4; /* two-byte VEX: C5 RvvvvLpp op modrm */
        } else if (b == 0xC4 && i + 9 <= n && (p[i + 1] & 0x1F) >= 1 && (p[i + 1] & 0x1F) <= 3 &&
                   (p[i + 4] & 0xC7) == 0x05) {
            q = i + 5; /* three-byte VEX */
        } else if (b == 0x62 && i + 10 <= n && (p[i + 1] & 0x0C) == 0 && (p[i + 2] & 0x04) &&
                   (p[i + 5] & 0xC7) == 0x05) {
            q = i + 6; /* EVEX */
        }
        if (q && q + 4 <= n) {
            uint64_t vq = r->va + q;
            uint64_t t = vq + 4 + (uint64_t)(int64_t)(int32_t)bsi_load32le(p + q);
            if (in_image(c, t)) {
                uint32_t v;
                c->stats[branch ? 1 : 2]++;
                if (out && rel32_value(c, vq, t, &v)) {
                    put32(out, q, v);
                    c->stats[0]++;
                }
                if (k) ck_jump(k, i, q + 4);
                i = q + 4;
                continue;
            }
        }
        i++;
    }
    if (k) ck_end(k, i);
    return i;
}

static void scan_x86(exe_ctx *c, const bsi_exe_region *r) {
    sink out = {c->buf + r->off, 0, r->len};
    x86_run(c, r, c->buf + r->off, 0, UINT64_MAX, &out, NULL);
}


/* ---- AArch64 -------------------------------------------------------------------- */

/* Write imm (already range-checked) into the field [lo, lo+bits) of instruction w. */
static uint32_t put_field(uint32_t w, unsigned lo, unsigned bits, int64_t imm) {
    uint32_t mask = (uint32_t)(((uint64_t)1 << bits) - 1) << lo;
    return (w & ~mask) | (((uint32_t)(uint64_t)imm << lo) & mask);
}

static int fits(int64_t v, unsigned bits) {
    return v >= -((int64_t)1 << (bits - 1)) && v < ((int64_t)1 << (bits - 1));
}

/* Words of an AArch64 region: word k at p + 4 * (k - k0) (the region itself, k0 = 0, or
 * a window's scratch copy starting at word k0). */
typedef struct {
    uint8_t *p;
    uint64_t k0;
} a64v;

static uint32_t a64_ld(const a64v *v, uint64_t k) { return bsi_load32le(v->p + 4 * (k - v->k0)); }
static void a64_st(const a64v *v, uint64_t k, uint32_t w) { bsi_store32le(v->p + 4 * (k - v->k0), w); }

/* The low-12-bit instruction that completes ADRP Rd at word k (ADD imm or a load/store
 * with unsigned offset using Rd as base), within the next 8 words; scale in *scale. */
static int64_t adrp_pair(const a64v *p, uint64_t k, uint64_t nwords, unsigned rd, unsigned *scale) {
    for (uint64_t j = k + 1; j < nwords && j <= k + 8; j++) {
        uint32_t w = a64_ld(p, j);
        if (((w >> 5) & 31) != rd) continue;
        if ((w & 0xFFC00000u) == 0x91000000u) { /* ADD Xd, Xn, #imm12 (no shift) */
            *scale = 0;
            return (int64_t)j;
        }
        if ((w & 0x3B000000u) == 0x39000000u) { /* LDR/STR (unsigned offset) */
            unsigned size = w >> 30, v = (w >> 26) & 1, opc = (w >> 22) & 3;
            *scale = (v && size == 0 && (opc & 2)) ? 4 : size;
            return (int64_t)j;
        }
    }
    return -1;
}

static void a64_adrp(exe_ctx *c, const bsi_exe_region *r, const a64v *p, uint64_t k,
                     uint64_t nwords, uint32_t w) {
    uint64_t pc = r->va + 4 * k, page = pc & ~(uint64_t)0xFFF, t, npc, nt;
    int64_t imm = sext(((uint64_t)((w >> 5) & 0x7FFFF) << 2) | ((w >> 29) & 3), 21), npages;
    unsigned scale = 0;
    int64_t j = adrp_pair(p, k, nwords, w & 31, &scale);
    uint32_t w2 = j >= 0 ? a64_ld(p, (uint64_t)j) : 0;
    uint64_t lo = j >= 0 ? (uint64_t)((w2 >> 10) & 0xFFF) << scale : 0;
    t = page + ((uint64_t)imm << 12) + lo;
    if (!in_image(c, t)) return;
    c->stats[4]++;
    if (!map_src(c, pc, &npc) || !map_va(c, t, &nt)) return;
    npages = (int64_t)((nt >> 12) - (npc >> 12));
    if (!fits(npages, 21)) return;
    w = put_field(w, 29, 2, npages & 3);
    w = put_field(w, 5, 19, npages >> 2);
    a64_st(p, k, w);
    if (j >= 0 && ((nt & 0xFFF) & (((uint64_t)1 << scale) - 1)) == 0)
        a64_st(p, (uint64_t)j, put_field(w2, 10, 12, (int64_t)((nt & 0xFFF) >> scale)));
    c->stats[0]++;
}

/* Words [k, kend) of AArch64 region r, read and rewritten in p. An ADRP rewrites the
 * low 12 bits of a later word (its pair, up to 8 words on) that a later ADRP may read
 * again: a word's final value depends on the original words up to 8 before it, so a
 * window of words [A, B) is exact when the walk starts at A - 8 on a copy of the
 * original words [A - 8, B + 8) (see a64_window). No other word is read after it was
 * written: a pair (ADD / LDR / STR unsigned offset) is never a candidate itself, and
 * the bits rewritten are not those that classify it. */
static void a64_run(exe_ctx *c, const bsi_exe_region *r, const a64v *p, uint64_t k, uint64_t kend) {
    uint64_t nwords = r->len / 4;
    for (; k < kend; k++) {
        uint32_t w = a64_ld(p, k);
        unsigned lo, bits, shift = 2;
        int64_t imm;
        uint64_t pc = r->va + 4 * k, t, npc, nt;
        if ((w & 0x7C000000u) == 0x14000000u) { /* B, BL */
            lo = 0, bits = 26;
        } else if ((w & 0xFF000010u) == 0x54000000u || (w & 0x7E000000u) == 0x34000000u ||
                   (w & 0x3B000000u) == 0x18000000u) { /* B.cond, CBZ/CBNZ, LDR literal */
            lo = 5, bits = 19;
        } else if ((w & 0x7E000000u) == 0x36000000u) { /* TBZ/TBNZ */
            lo = 5, bits = 14;
        } else if ((w & 0x9F000000u) == 0x90000000u) { /* ADRP (+ its low-12-bit pair) */
            a64_adrp(c, r, p, k, nwords, w);
            continue;
        } else if ((w & 0x9F000000u) == 0x10000000u) { /* ADR */
            imm = sext(((uint64_t)((w >> 5) & 0x7FFFF) << 2) | ((w >> 29) & 3), 21);
            t = pc + (uint64_t)imm;
            if (!in_image(c, t)) continue;
            c->stats[3]++;
            if (!map_src(c, pc, &npc) || !map_va(c, t, &nt) || !fits((int64_t)(nt - npc), 21))
                continue;
            imm = (int64_t)(nt - npc);
            w = put_field(put_field(w, 29, 2, imm & 3), 5, 19, imm >> 2);
            a64_st(p, k, w);
            c->stats[0]++;
            continue;
        } else {
            continue;
        }
        imm = sext(w >> lo, bits) * 4;
        t = pc + (uint64_t)imm;
        if (!in_image(c, t)) continue;
        c->stats[3]++;
        if (!map_src(c, pc, &npc) || !map_va(c, t, &nt)) continue;
        imm = (int64_t)(nt - npc);
        if (imm % 4 || !fits(imm / 4, bits)) continue;
        a64_st(p, k, put_field(w, lo, bits, imm >> shift));
        c->stats[0]++;
    }
}

static void scan_a64(exe_ctx *c, const bsi_exe_region *r) {
    a64v p = {c->buf + r->off, 0};
    a64_run(c, r, &p, 0, r->len / 4);
}

/* ---- tables --------------------------------------------------------------------- */

static int map64_at(exe_ctx *c, uint64_t off) {
    uint64_t v = bsi_load64le(c->buf + off), nv;
    if (v == 0 || !map_va(c, v, &nv)) return 0;
    bsi_store64le(c->buf + off, nv);
    return 1;
}

/* Does [off, off + n) overlap one of the avoided (windowed) regions? */
static int avoided(const exe_ctx *c, uint64_t off, uint64_t n) {
    uint64_t a = 0, b = c->n_avoid;
    while (a < b) { /* the first region ending after off */
        uint64_t mid = a + (b - a) / 2;
        if (c->avoid[mid].off + c->avoid[mid].len <= off)
            a = mid + 1;
        else
            b = mid;
    }
    return a < c->n_avoid && c->avoid[a].off < off + n;
}

enum { RELA_ALL, RELA_IN_PLACE };

/* An Elf64_Rela table: r_offset, the addend of RELATIVE / IRELATIVE relocations and
 * (RELA_ALL, RELA_IN_PLACE) the pointer each RELATIVE / JUMP_SLOT relocation puts in
 * place. RELA_IN_PLACE does only the last (its table's own entries are windowed:
 * rela_window) and counts pointers in place that fall in a windowed region. */
static void scan_rela(exe_ctx *c, const bsi_exe_region *r, int mode) {
    int x86 = r->arg == 62;
    uint32_t relative = x86 ? 8 : 1027, jump_slot = x86 ? 7 : 1026, irelative = x86 ? 37 : 1032;
    for (uint64_t e = 0; e + 24 <= r->len; e += 24) {
        uint64_t at = r->off + e, roff = bsi_load64le(c->buf + at), nroff, ioff;
        uint32_t type = (uint32_t)bsi_load64le(c->buf + at + 8);
        c->stats[5]++;
        if (mode == RELA_ALL) {
            if (map_va(c, roff, &nroff)) {
                bsi_store64le(c->buf + at, nroff);
                c->stats[0]++;
            }
            if (type == relative || type == irelative) c->stats[0] += (uint64_t)map64_at(c, at + 16);
        }
        if ((type == relative || type == jump_slot) && va_to_off(c, roff, 8, &ioff)) {
            if (mode == RELA_IN_PLACE && avoided(c, ioff, 8)) c->conflicts++;
            c->stats[0] += (uint64_t)map64_at(c, ioff); /* the pointer in place */
        }
    }
}

/* The entries of RELA region r (original bytes p) that overlap [out->wa, out->wb):
 * r_offset and addends, as scan_rela(RELA_ALL) writes them (an entry reads only itself). */
static void rela_window(exe_ctx *c, const bsi_exe_region *r, const uint8_t *p, const sink *out) {
    int x86 = r->arg == 62;
    uint32_t relative = x86 ? 8 : 1027, irelative = x86 ? 37 : 1032;
    for (uint64_t e = out->wa / 24 * 24; e < out->wb && e + 24 <= r->len; e += 24) {
        uint64_t roff = bsi_load64le(p + e), v = bsi_load64le(p + e + 16), nv;
        uint32_t type = (uint32_t)bsi_load64le(p + e + 8);
        if (map_va(c, roff, &nv)) put64(out, e, nv);
        if ((type == relative || type == irelative) && v != 0 && map_va(c, v, &nv))
            put64(out, e + 16, nv);
    }
}

static void scan_sym(exe_ctx *c, const bsi_exe_region *r) {
    for (uint64_t e = 0; e + 24 <= r->len; e += 24) {
        uint64_t at = r->off + e;
        uint16_t shndx = bsi_load16le(c->buf + at + 6);
        uint8_t type = c->buf[at + 4] & 0xF;
        if (shndx == 0 || shndx >= 0xFF00 || type == 6 /* STT_TLS */) continue;
        c->stats[5]++;
        c->stats[0] += (uint64_t)map64_at(c, at + 8);
    }
}

/* A datarel / pcrel sdata4 value at buf[off]: target = base + v. */
static void fix_sdata4(exe_ctx *c, uint64_t off, uint64_t base) {
    uint64_t t = base + (uint64_t)(int64_t)(int32_t)bsi_load32le(c->buf + off), nb, nt;
    int64_t v;
    c->stats[6]++;
    if (!map_va(c, base, &nb) || !map_va(c, t, &nt)) return;
    v = (int64_t)(nt - nb);
    if (v < INT32_MIN || v > INT32_MAX) return;
    bsi_store32le(c->buf + off, (uint32_t)(int32_t)v);
    c->stats[0]++;
}

static void scan_ehhdr(exe_ctx *c, const bsi_exe_region *r) {
    const uint8_t *p = c->buf + r->off;
    uint64_t count;
    if (r->len < 12 || p[0] != 1 || p[1] != 0x1B || p[2] != 0x03 || p[3] != 0x3B) return;
    count = bsi_load32le(p + 8);
    fix_sdata4(c, r->off + 4, r->va + 4);
    for (uint64_t k = 0; k < count && 12 + 8 * k + 8 <= r->len; k++) {
        fix_sdata4(c, r->off + 12 + 8 * k, r->va);
        fix_sdata4(c, r->off + 16 + 8 * k, r->va);
    }
}

static int uleb(const uint8_t *p, uint64_t *pos, uint64_t end, uint64_t *out) {
    uint64_t v = 0;
    for (unsigned s = 0; s < 64 && *pos < end; s += 7) {
        uint8_t b = p[(*pos)++];
        v |= (uint64_t)(b & 0x7F) << s;
        if (!(b & 0x80)) {
            *out = v;
            return 1;
        }
    }
    return 0;
}

/* FDE pointer encoding of the CIE at p[pos .. end), or -1. */
static int cie_encoding(const uint8_t *p, uint64_t pos, uint64_t end) {
    uint64_t a = pos + 9, aug, x, k;
    uint8_t version;
    if (pos + 9 > end) return -1;
    version = p[pos + 8];
    aug = a;
    while (a < end && p[a]) a++;
    if (a >= end || p[aug] != 'z') return -1;
    a++;
    if (!uleb(p, &a, end, &x) || !uleb(p, &a, end, &x)) return -1; /* code/data align */
    if (version == 1) {
        if (++a > end) return -1;
    } else if (!uleb(p, &a, end, &x)) {
        return -1;
    }
    if (!uleb(p, &a, end, &x)) return -1; /* augmentation data length */
    for (k = aug + 1; p[k]; k++) {
        if (a >= end) return -1;
        if (p[k] == 'R') return p[a];
        if (p[k] == 'L') {
            a++;
        } else if (p[k] == 'P') {
            uint8_t e = p[a++];
            unsigned sz = (e & 7) == 2 ? 2 : (e & 7) == 3 ? 4 : (e & 7) == 4 || (e & 0xF) == 0 ? 8 : 0;
            if (!sz) return -1;
            a += sz;
        } else if (p[k] != 'S' && p[k] != 'B') {
            return -1;
        }
    }
    return -1;
}

static void scan_ehframe(exe_ctx *c, const bsi_exe_region *r) {
    const uint8_t *p = c->buf + r->off;
    uint64_t pos = 0, cie_pos = UINT64_MAX;
    int enc = -1;
    while (pos + 8 <= r->len) {
        uint64_t len = bsi_load32le(p + pos), id, end;
        if (len == 0 || len == 0xFFFFFFFFu || len > r->len - pos - 4) return;
        end = pos + 4 + len;
        id = bsi_load32le(p + pos + 4);
        if (id != 0 && id <= pos + 4 && pos + 12 <= end) {
            uint64_t cie = pos + 4 - id;
            if (cie != cie_pos) {
                uint64_t clen = cie + 4 <= r->len ? bsi_load32le(p + cie) : 0;
                cie_pos = cie;
                enc = clen && clen <= r->len - cie - 4 ? cie_encoding(p, cie, cie + 4 + clen) : -1;
            }
            if (enc == 0x1B) fix_sdata4(c, r->off + pos + 8, r->va + pos + 8);
        }
        pos = end;
    }
}

/* ---- entry points --------------------------------------------------------------- */

BSI_API int bsi_exe_check(uint64_t size, const bsi_exe_region *regions, uint64_t n_regions,
                          const bsi_exe_map *map, uint64_t n_map) {
    int loads = 0;
    if ((n_regions && !regions) || (n_map && !map)) return BSI_E_INVAL;
    if (n_regions > BSI_EXE_MAX_REGIONS || n_map > BSI_EXE_MAX_MAP) return BSI_E_CORRUPT;
    for (uint64_t i = 0; i < n_regions; i++) {
        const bsi_exe_region *r = &regions[i];
        uint64_t end;
        if (r->kind >= BSI_EXE_KINDS || !bsi_range_ok(r->off, r->len, size) ||
            bsi_add_overflow_u64(r->va, r->len, &end) || bsi_add_overflow_u64(end, r->arg, &end))
            return BSI_E_CORRUPT;
        if (r->kind != BSI_EXE_LOAD && r->kind != BSI_EXE_RELA && r->arg) return BSI_E_CORRUPT;
        if (r->kind == BSI_EXE_RELA && r->arg != 62 && r->arg != 183) return BSI_E_CORRUPT;
        loads += r->kind == BSI_EXE_LOAD;
    }
    if (n_regions && !loads) return BSI_E_CORRUPT;
    for (uint64_t i = 0; i < n_map; i++) {
        uint64_t end;
        if (map[i].len == 0 || bsi_add_overflow_u64(map[i].old_va, map[i].len, &end))
            return BSI_E_CORRUPT;
        if (i + 1 < n_map && map[i + 1].old_va < end) return BSI_E_CORRUPT;
    }
    return BSI_OK;
}

/* One varint of a transform body (the Python packer's _varint): 0 or BSI_E_TRUNCATED. */
static int get_varint(const uint8_t *data, uint64_t size, uint64_t *pos, uint64_t *out) {
    uint64_t v = 0, p = *pos;
    for (unsigned shift = 0; shift <= 63; shift += 7) {
        uint8_t b;
        if (p >= size) return BSI_E_TRUNCATED;
        b = data[p++];
        if (shift == 63 && (b & 0xFE)) return BSI_E_TRUNCATED; /* 2**64 or more, or longer */
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *out = v, *pos = p;
            return BSI_OK;
        }
    }
    return BSI_E_TRUNCATED; /* an eleventh byte */
}

BSI_API int bsi_exe_unpack_map(const uint8_t *data, uint64_t size, uint64_t *pos, bsi_exe_map *map,
                               uint64_t n_map) {
    uint64_t p, prev_end = 0;
    int64_t prev_delta = 0;
    if (!pos || (size && !data) || (n_map && !map)) return BSI_E_INVAL;
    p = *pos;
    for (uint64_t i = 0; i < n_map; i++) {
        uint64_t gap, len, zz, va, end;
        int64_t change, delta;
        *pos = p;
        if (get_varint(data, size, &p, &gap) < 0 || get_varint(data, size, &p, &len) < 0 ||
            get_varint(data, size, &p, &zz) < 0)
            return BSI_E_TRUNCATED;
        change = (int64_t)(zz >> 1) ^ -(int64_t)(zz & 1);
        if (len == 0 || bsi_add_overflow_u64(prev_end, gap, &va) ||
            bsi_add_overflow_u64(va, len, &end) ||
            __builtin_add_overflow(prev_delta, change, &delta))
            return BSI_E_RANGE;
        map[i].old_va = va, map[i].len = len, map[i].delta = delta;
        prev_end = end, prev_delta = delta;
    }
    *pos = p;
    return BSI_OK;
}

BSI_API int64_t bsi_exe_transform(uint8_t *buf, uint64_t size, const bsi_exe_region *regions,
                                  uint64_t n_regions, const bsi_exe_map *map, uint64_t n_map,
                                  uint64_t *stats) {
    return bsi_exe_transform_indexed(buf, size, regions, n_regions, map, n_map, stats, NULL);
}

/* Set up c for one group (its regions and map): the address span and the index. */
static void ctx_init(exe_ctx *c, uint8_t *buf, uint64_t size, const bsi_exe_region *regions,
                     uint64_t n_regions, const bsi_exe_map *map, uint64_t n_map, uint64_t *stats,
                     uint32_t *index) {
    c->buf = buf, c->size = size, c->reg = regions, c->nreg = n_regions, c->map = map;
    c->nmap = n_map, c->finger = 0, c->index = NULL, c->shift = 0, c->stats = stats;
    c->avoid = NULL, c->n_avoid = 0, c->conflicts = 0;
    memset(c->stats, 0, sizeof(uint64_t) * BSI_EXE_KINDS);
    c->lo = UINT64_MAX, c->hi = 0;
    for (uint64_t i = 0; i < n_regions; i++) {
        if (regions[i].kind != BSI_EXE_LOAD) continue;
        if (regions[i].va < c->lo) c->lo = regions[i].va;
        if (regions[i].va + regions[i].len + regions[i].arg > c->hi)
            c->hi = regions[i].va + regions[i].len + regions[i].arg;
    }
    if (index && c->hi > c->lo) build_index(c, index);
}

/* Every region in order; eager: only what bsi_exe_transform_eager does. */
static void run_regions(exe_ctx *c, int eager) {
    for (uint64_t i = 0; i < c->nreg; i++) {
        const bsi_exe_region *r = &c->reg[i];
        switch (r->kind) {
        case BSI_EXE_X86_64:
            if (!eager) scan_x86(c, r);
            break;
        case BSI_EXE_A64:
            if (!eager) scan_a64(c, r);
            break;
        case BSI_EXE_RELA: scan_rela(c, r, eager ? RELA_IN_PLACE : RELA_ALL); break;
        case BSI_EXE_SYM: scan_sym(c, r); break;
        case BSI_EXE_EHHDR: scan_ehhdr(c, r); break;
        case BSI_EXE_EHFRAME: scan_ehframe(c, r); break;
        case BSI_EXE_PTR64:
            for (uint64_t e = 0; e + 8 <= r->len; e += 8) {
                c->stats[7]++;
                c->stats[0] += (uint64_t)map64_at(c, r->off + e);
            }
            break;
        default: break;
        }
    }
}

BSI_API int64_t bsi_exe_transform_indexed(uint8_t *buf, uint64_t size,
                                          const bsi_exe_region *regions, uint64_t n_regions,
                                          const bsi_exe_map *map, uint64_t n_map, uint64_t *stats,
                                          uint32_t *index) {
    uint64_t local[BSI_EXE_KINDS] = {0};
    exe_ctx c;
    int rc;
    if (size && !buf) return BSI_E_INVAL;
    if ((rc = bsi_exe_check(size, regions, n_regions, map, n_map)) < 0) return rc;
    ctx_init(&c, buf, size, regions, n_regions, map, n_map, stats ? stats : local, index);
    run_regions(&c, 0);
    return (int64_t)c.stats[0];
}

BSI_API int64_t bsi_exe_transform_eager(uint8_t *buf, uint64_t size, const bsi_exe_region *regions,
                                        uint64_t n_regions, const bsi_exe_map *map, uint64_t n_map,
                                        uint32_t *index, const bsi_exe_region *avoid,
                                        uint64_t n_avoid, uint64_t *conflicts) {
    uint64_t local[BSI_EXE_KINDS] = {0};
    exe_ctx c;
    int rc;
    if ((size && !buf) || (n_avoid && !avoid)) return BSI_E_INVAL;
    if ((rc = bsi_exe_check(size, regions, n_regions, map, n_map)) < 0) return rc;
    for (uint64_t i = 0; i < n_avoid; i++)
        if (!bsi_range_ok(avoid[i].off, avoid[i].len, size) ||
            (i && avoid[i].off < avoid[i - 1].off + avoid[i - 1].len))
            return BSI_E_INVAL;
    ctx_init(&c, buf, size, regions, n_regions, map, n_map, local, index);
    c.avoid = avoid, c.n_avoid = n_avoid;
    run_regions(&c, 1);
    if (conflicts) *conflicts = c.conflicts;
    return (int64_t)c.stats[0];
}

/* ---- the predicted old image in windows (bsi_exe_source) ----------------------------- */

static int windowed_kind(uint32_t kind) {
    return kind == BSI_EXE_X86_64 || kind == BSI_EXE_A64 || kind == BSI_EXE_RELA;
}

BSI_API int bsi_exe_source_init(bsi_exe_source *s) {
    uint64_t ck = 0;
    if (!s || (s->size && (!s->base || !s->orig)) || (s->n_groups && !s->groups) ||
        (s->n_wregions && !s->wregions) || !s->index || !s->scratch || (s->n_ckpt && !s->ckpt))
        return BSI_E_INVAL;
    for (uint64_t i = 0; i < s->n_wregions; i++) {
        bsi_exe_wregion *w = &s->wregions[i];
        const bsi_exe_group *g;
        if (!windowed_kind(w->r.kind) || w->group >= s->n_groups ||
            !bsi_range_ok(w->r.off, w->r.len, s->size) ||
            (i && w->r.off < s->wregions[i - 1].r.off + s->wregions[i - 1].r.len))
            return BSI_E_INVAL;
        g = &s->groups[w->group];
        if (bsi_exe_check(s->size, g->regions, g->n_regions, g->map, g->n_map) < 0)
            return BSI_E_INVAL;
        w->ck_first = ck, w->ck_known = 0;
        if (w->r.kind == BSI_EXE_X86_64) ck += (w->r.len >> BSI_EXE_CK_SHIFT) + 2;
        if (ck > s->n_ckpt) return BSI_E_INVAL;
    }
    s->index_group = s->reads = s->walked = s->have_off = s->have_len = 0;
    return BSI_OK;
}

/* Map context for group g (the index is rebuilt when another large group needs it). */
static void source_ctx(bsi_exe_source *s, uint64_t g, exe_ctx *c, uint64_t *stats) {
    const bsi_exe_group *gr = &s->groups[g];
    int big = gr->n_map >= 1024;
    ctx_init(c, NULL, s->size, gr->regions, gr->n_regions, gr->map, gr->n_map, stats, NULL);
    if (big && s->index_group == g + 1) {
        c->index = s->index;
        for (c->shift = 0; ((c->hi - c->lo) >> c->shift) >= BSI_EXE_INDEX_LEN - 2; c->shift++) {
        }
    } else if (big && c->hi > c->lo) {
        build_index(c, s->index);
        s->index_group = g + 1;
    }
}

/* X86_64 region w, region bytes [a, b) into out: the walk from the checkpoint at or
 * before a - 16, the checkpoints found first (by a walk that writes nothing) if needed. */
static void x86_range(exe_ctx *c, bsi_exe_source *s, bsi_exe_wregion *w, const sink *out) {
    const uint8_t *p = s->orig + w->r.off;
    uint64_t j = out->wa >> BSI_EXE_CK_SHIFT, cap = (w->r.len >> BSI_EXE_CK_SHIFT) + 2, from, to;
    ck_rec k = {s->ckpt + w->ck_first, &w->ck_known, cap};
    if (w->ck_known == 0) k.ck[w->ck_known++] = 0;
    if (j >= w->ck_known) {
        from = ck_target(w->ck_known - 1) + k.ck[w->ck_known - 1];
        s->walked += x86_run(c, &w->r, p, from, out->wa, NULL, &k) - from;
    }
    from = ck_target(j) + k.ck[j];
    to = x86_run(c, &w->r, p, from, out->wb, out, &k);
    s->walked += to - from;
}

/* A64 region w, region bytes [a, b) into out: words from A - 8 on, on a copy. */
static void a64_range(exe_ctx *c, bsi_exe_source *s, bsi_exe_wregion *w, const sink *out) {
    uint64_t nwords = w->r.len / 4, A = out->wa / 4, B = (out->wb + 3) / 4, k0, e, hi;
    uint8_t *copy = s->scratch + BSI_EXE_CHUNK;
    a64v v;
    if (B > nwords) B = nwords;
    if (A >= B) return;
    k0 = A >= 8 ? A - 8 : 0;
    e = B + 8 < nwords ? B + 8 : nwords;
    memcpy(copy, s->orig + w->r.off + 4 * k0, 4 * (e - k0));
    v.p = copy, v.k0 = k0;
    a64_run(c, &w->r, &v, k0, B);
    hi = out->wb < 4 * B ? out->wb : 4 * B;
    memcpy(out->dst, copy + (out->wa - 4 * k0), hi - out->wa);
}

/* The first windowed region that ends after off (n_wregions if none). */
static uint64_t wregion_after(const bsi_exe_source *s, uint64_t off) {
    uint64_t a = 0, b = s->n_wregions;
    while (a < b) {
        uint64_t mid = a + (b - a) / 2;
        if (s->wregions[mid].r.off + s->wregions[mid].r.len <= off)
            a = mid + 1;
        else
            b = mid;
    }
    return a;
}

const uint8_t *bsi_exe_source_at(bsi_exe_source *s, uint64_t off, uint64_t *n, uint64_t want) {
    uint64_t i, stats[BSI_EXE_KINDS], a, b;
    bsi_exe_wregion *w;
    exe_ctx c;
    sink out;
    if (off - s->have_off < s->have_len) { /* made already (the rest of an op) */
        uint64_t left = s->have_len - (off - s->have_off);
        if (*n > left) *n = left;
        return s->scratch + (off - s->have_off);
    }
    i = wregion_after(s, off);
    if (i == s->n_wregions || s->wregions[i].r.off >= off + *n) return s->base + off;
    w = &s->wregions[i];
    if (w->r.off > off) {
        *n = w->r.off - off; /* plain bytes up to the region */
        return s->base + off;
    }
    if (want < *n) want = *n;
    a = off - w->r.off, b = w->r.len - a < want ? w->r.len : a + want;
    if (b - a > BSI_EXE_CHUNK) b = a + BSI_EXE_CHUNK;
    if (*n > b - a) *n = b - a;
    s->have_off = off, s->have_len = b - a;
    memcpy(s->scratch, s->orig + off, b - a); /* the bytes no reference covers */
    out.dst = s->scratch, out.wa = a, out.wb = b;
    source_ctx(s, w->group, &c, stats);
    if (w->r.kind == BSI_EXE_X86_64)
        x86_range(&c, s, w, &out);
    else if (w->r.kind == BSI_EXE_A64)
        a64_range(&c, s, w, &out);
    else
        rela_window(&c, &w->r, s->orig + w->r.off, &out);
    s->reads++;
    return s->scratch;
}

BSI_API int bsi_exe_source_read(bsi_exe_source *s, uint64_t off, uint64_t n, uint8_t *dst) {
    if (!s || (n && !dst)) return BSI_E_INVAL;
    if (!bsi_range_ok(off, n, s->size)) return BSI_E_RANGE;
    while (n) {
        uint64_t k = n;
        const uint8_t *p = bsi_exe_source_at(s, off, &k, n);
        memcpy(dst, p, k);
        dst += k, off += k, n -= k;
    }
    return BSI_OK;
}
