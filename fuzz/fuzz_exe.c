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
 * libFuzzer:   clang -g -O1 -fsanitize=fuzzer,address,undefined -Icsrc \
 *                -DBSI_VERSION_STRING='"fuzz"' fuzz/fuzz_exe.c csrc/bsi_exe.c csrc/bsi_core.c
 * without clang: gcc -g -O1 -fsanitize=address,undefined -DBSI_FUZZ_STANDALONE -Icsrc \
 *                -DBSI_VERSION_STRING='"fuzz"' fuzz/fuzz_exe.c csrc/bsi_exe.c csrc/bsi_core.c
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
    return 0;
}

#ifdef BSI_FUZZ_STANDALONE
#include "standalone.h"

int main(int argc, char **argv) {
    unsigned long iters = fuzz_standalone(argc, argv, 1 << 18, 4096, 8);
    printf("ran %lu inputs, %lu passed the checks and were transformed twice\n", iters,
           transformed);
    return 0;
}
#endif
