/* libFuzzer harness for the executable reference transform (csrc/bsi_exe.c).
 *
 * Input: byte 0 = number of regions (0..31), byte 1 = number of map entries (0..63),
 * then that many regions of 14 bytes (off u32, len u32, va u32, kind u8, arg u8: arg
 * picks 62 / 183 / a bss length for LOAD) and map entries of 12 bytes (old_va u32,
 * len u32, delta i32), then the old image (the rest, up to 256 KiB). Regions and map
 * are passed to bsi_exe_check and bsi_exe_transform exactly as decoded, so out-of-range
 * and overlapping values reach the checks. When the checks pass, the transform runs
 * twice on two copies, the second time with its map index (bsi_exe_transform_indexed),
 * and must produce identical bytes and counts (the applier relies on the transform
 * being a function of its inputs), must not write outside the image, and must agree
 * with bsi_exe_check.
 *
 * Then the predicted old image made on demand (bsi_exe_source): when the windowed
 * regions (X86_64, A64, RELA) are disjoint from each other and from every other
 * non-LOAD region (what bsipatch/delta/exewindow.py checks) and no pointer relocated in
 * place falls in one (bsi_exe_transform_eager's count), every byte read through the
 * source, in pieces of an input-chosen size and then in an input-chosen order, and every
 * byte the applier copies through it (bsi_patch_feed_src, two COPY ops), must equal the
 * whole transform's; reads outside the image must be refused.
 *
 * libFuzzer:   clang -g -O1 -fsanitize=fuzzer,address,undefined -Icsrc \
 *                -DBSI_VERSION_STRING='"fuzz"' fuzz/fuzz_exe.c csrc/bsi_exe.c csrc/bsi_core.c \
 *                csrc/bsi_patch.c
 * without clang: gcc -g -O1 -fsanitize=address,undefined -DBSI_FUZZ_STANDALONE -Icsrc \
 *                -DBSI_VERSION_STRING='"fuzz"' fuzz/fuzz_exe.c csrc/bsi_exe.c csrc/bsi_core.c \
 *                csrc/bsi_patch.c
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bsipatch.h"

#define MAX_IMAGE (256u << 10)

static unsigned long transformed; /* inputs that passed the checks (standalone report) */

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static unsigned long windowed; /* inputs whose windowed reads were compared */

static int is_windowed(uint32_t kind) {
    return kind == BSI_EXE_X86_64 || kind == BSI_EXE_A64 || kind == BSI_EXE_RELA;
}

/* The windowed regions sorted by offset into w (n of them), or -1 when some windowed
 * region overlaps another non-LOAD region (the windows would not be exact). */
static int windowed_regions(const bsi_exe_region *regs, size_t nreg, bsi_exe_wregion *w) {
    int n = 0;
    for (size_t i = 0; i < nreg; i++) {
        if (regs[i].kind == BSI_EXE_LOAD || regs[i].len == 0) continue;
        for (size_t j = 0; j < nreg; j++) {
            if (j == i || regs[j].kind == BSI_EXE_LOAD || regs[j].len == 0) continue;
            if ((is_windowed(regs[i].kind) || is_windowed(regs[j].kind)) &&
                regs[i].off < regs[j].off + regs[j].len && regs[j].off < regs[i].off + regs[i].len)
                return -1;
        }
        if (!is_windowed(regs[i].kind)) continue;
        {
            int k = n++;
            while (k > 0 && w[k - 1].r.off > regs[i].off) { /* insertion sort */
                w[k] = w[k - 1];
                k--;
            }
            memset(&w[k], 0, sizeof w[k]);
            w[k].r = regs[i];
        }
    }
    return n;
}

/* Two COPY ops over the whole image through bsi_patch_feed_src: the output must be the
 * whole transform's bytes. */
static void copy_through_applier(bsi_exe_source *src, const uint8_t *want, size_t n, size_t cut) {
    static uint8_t payload[128], out[MAX_IMAGE + 1], scratch[64];
    bsi_patch_state st;
    bsi_inbuf in;
    bsi_outbuf ob;
    size_t p = 0, c0;
    uint64_t lens[2] = {cut, n - cut};
    if (n == 0) return;
    memset(payload, 0, 56);
    for (int k = 0; k < 2; k++) {
        uint64_t v = lens[k] << 2; /* BSI_OP_COPY = 0; offset delta 0 */
        if (!lens[k]) continue;
        while (v >= 0x80) payload[56 + p++] = (uint8_t)(v | 0x80), v >>= 7;
        payload[56 + p++] = (uint8_t)v;
        payload[56 + p++] = 0;
    }
    c0 = (lens[0] != 0) + (lens[1] != 0);
    for (int k = 0; k < 8; k++) payload[k] = (uint8_t)((uint64_t)n >> (8 * k));
    payload[8] = (uint8_t)c0;
    payload[16] = (uint8_t)p;
    if (bsi_patch_init(&st, n, n, sizeof scratch) < 0) abort();
    in.ptr = payload, in.size = 56 + p, in.pos = 0;
    ob.ptr = out, ob.size = n, ob.pos = 0;
    if (bsi_patch_feed_src(&st, src, scratch, sizeof scratch, &in, &ob) < 0) abort();
    if (bsi_patch_finish(&st) < 0 || ob.pos != n || memcmp(out, want, n) != 0) abort();
}

static void check_windowed(const uint8_t *orig, const uint8_t *want, size_t n,
                           const bsi_exe_region *regs, size_t nreg, const bsi_exe_map *map,
                           size_t nmap, const uint8_t *data, size_t size) {
    static uint8_t base[MAX_IMAGE + 16], got[MAX_IMAGE + 16];
    static uint8_t scratch[2 * BSI_EXE_CHUNK + 128], ckpt[(MAX_IMAGE >> BSI_EXE_CK_SHIFT) * 32 + 64];
    static uint32_t index[BSI_EXE_INDEX_LEN];
    static bsi_exe_wregion w[32];
    static bsi_exe_region avoid[32];
    bsi_exe_group g = {regs, nreg, map, nmap};
    bsi_exe_source src;
    uint64_t conflicts = 0, nck = 0;
    size_t piece = size > 2 ? (size_t)data[size - 1] * 7 + 1 : 4096;
    int nw = windowed_regions(regs, nreg, w);
    if (nw <= 0) return;
    for (int i = 0; i < nw; i++) {
        avoid[i] = w[i].r;
        if (w[i].r.kind == BSI_EXE_X86_64) nck += (w[i].r.len >> BSI_EXE_CK_SHIFT) + 2;
    }
    if (nck > sizeof ckpt) abort();
    memcpy(base, orig, n);
    if (bsi_exe_transform_eager(base, n, regs, nreg, map, nmap, index, avoid, (uint64_t)nw,
                                &conflicts) < 0)
        abort();
    if (conflicts) return;
    memset(&src, 0, sizeof src);
    src.base = base, src.orig = orig, src.size = n, src.groups = &g, src.n_groups = 1;
    src.wregions = w, src.n_wregions = (uint64_t)nw, src.ckpt = ckpt, src.n_ckpt = nck;
    src.index = index, src.scratch = scratch;
    if (bsi_exe_source_init(&src) < 0) abort();
    for (size_t off = 0; off < n; off += piece) { /* in order, pieces of one size */
        size_t k = n - off < piece ? n - off : piece;
        if (bsi_exe_source_read(&src, off, k, got + off) < 0) abort();
    }
    if (memcmp(got, want, n) != 0) abort();
    for (size_t k = 0; k + 4 <= size && k < 64; k += 4) { /* in an order the input picks */
        size_t off = n ? rd32(data + k) % n : 0, len = 1 + data[k] % 61;
        if (off + len > n) len = n - off;
        if (len && (bsi_exe_source_read(&src, off, len, got) < 0 || memcmp(got, want + off, len)))
            abort();
    }
    if (bsi_exe_source_read(&src, n, 1, got) != BSI_E_RANGE) abort();
    copy_through_applier(&src, want, n, n ? piece % (n + 1) : 0);
    windowed++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static bsi_exe_region regs[32];
    static bsi_exe_map map[64];
    static uint8_t a[MAX_IMAGE + 16], b[MAX_IMAGE + 16];
    static uint32_t index[BSI_EXE_INDEX_LEN];
    uint64_t sa[BSI_EXE_KINDS], sb[BSI_EXE_KINDS];
    size_t nreg, nmap, pos = 2, n;
    int64_t ra, rb;
    int chk;
    if (size < 2) return 0;
    nreg = data[0] % 32;
    nmap = data[1] % 64;
    if (size < pos + 14 * nreg + 12 * nmap) return 0;
    for (size_t i = 0; i < nreg; i++, pos += 14) {
        const uint8_t *p = data + pos;
        regs[i].off = rd32(p);
        regs[i].len = rd32(p + 4);
        regs[i].va = rd32(p + 8) | ((uint64_t)(p[12] & 0x80) << 56); /* reach overflow checks */
        regs[i].kind = p[12] & 0x0F;
        regs[i].arg = p[13] == 1 ? 62 : p[13] == 2 ? 183 : p[13] == 3 ? 0xFFFFFFFFu : p[13] >> 2;
    }
    for (size_t i = 0; i < nmap; i++, pos += 12) {
        const uint8_t *p = data + pos;
        map[i].old_va = rd32(p);
        map[i].len = rd32(p + 4);
        map[i].delta = (int32_t)rd32(p + 8);
    }
    n = size - pos;
    if (n > MAX_IMAGE) n = MAX_IMAGE;
    memcpy(a, data + pos, n);
    memcpy(b, data + pos, n);
    memset(a + n, 0xA5, 16); /* guard bytes after the image */
    memset(b + n, 0xA5, 16);
    chk = bsi_exe_check(n, regs, nreg, map, nmap);
    ra = bsi_exe_transform(a, n, regs, nreg, map, nmap, sa);
    if ((chk < 0) != (ra < 0)) abort();
    if (ra < 0) return 0;
    rb = bsi_exe_transform_indexed(b, n, regs, nreg, map, nmap, sb, index); /* same bytes */
    if (ra != rb || memcmp(a, b, n + 16) != 0 || memcmp(sa, sb, sizeof sa) != 0) abort();
    for (int i = 0; i < 16; i++)
        if (a[n + i] != 0xA5) abort();
    if ((uint64_t)ra != sa[0]) abort();
    transformed++;
    check_windowed(data + pos, a, n, regs, nreg, map, nmap, data, size);
    return 0;
}

#ifdef BSI_FUZZ_STANDALONE
#include "standalone.h"

int main(int argc, char **argv) {
    unsigned long iters = fuzz_standalone(argc, argv, 1 << 18, 4096, 8);
    printf("ran %lu inputs, %lu passed the checks and were transformed twice, %lu read in "
           "windows\n", iters, transformed, windowed);
    return 0;
}
#endif
