/* libFuzzer harness for the streaming patch applier (csrc/bsi_patch.c).
 *
 * Input: byte 0 picks the difference-stream mode (bit 7: BSI_PATCH_DENSE, else sparse)
 * and the feed chunk size (bits 0-6: 1..128), byte 1 the output buffer size
 * (1..256); the rest is a segment payload fed to bsi_patch_feed against a fixed
 * 64 KiB old image. The declared output size is taken from the payload's own
 * header (capped at 1 MiB) so the parser gets past its first check.
 *
 * The same payload is then applied twice more through bsi_patch_feed_prov with an
 * output buffer of at least one block and an input-chosen phase: once producing every
 * byte, checking that each block reported as a copy of old block k (or as zero) holds
 * exactly that; once skipping reported blocks, checking that every other byte is the
 * same as in the full run.
 *
 * libFuzzer:   clang -g -O1 -fsanitize=fuzzer,address,undefined -Icsrc \
 *                -DBSI_VERSION_STRING='"fuzz"' fuzz/fuzz_patch.c csrc/bsi_patch.c csrc/bsi_core.c \
 *                csrc/bsi_exe.c
 * without clang: gcc -g -O1 -fsanitize=address,undefined -DBSI_FUZZ_STANDALONE -Icsrc \
 *                -DBSI_VERSION_STRING='"fuzz"' fuzz/fuzz_patch.c csrc/bsi_patch.c csrc/bsi_core.c \
 *                csrc/bsi_exe.c (runs random mutations of the seed files given as arguments)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bsipatch.h"

#define OLD_SIZE 65536
#define SCRATCH 65536

#define MAX_OUT (1u << 20)
#define BS 4096u

static unsigned long reported; /* blocks reported and checked (for the standalone run) */
static uint32_t mode;          /* BSI_PATCH_SPARSE or BSI_PATCH_DENSE, from the input */

/* Apply with provenance into full[]; return bytes produced, or -1 on an error. */
static int64_t run_prov(const uint8_t *data, size_t size, size_t chunk, size_t out_size,
                        uint64_t declared, uint64_t phase, uint32_t flags, const uint8_t *old,
                        uint8_t *scratch, uint8_t *full, uint64_t *prov, uint64_t nprov) {
    static uint8_t out[3 * BS + 7];
    bsi_patch_state st;
    bsi_inbuf in;
    bsi_outbuf ob = {out, out_size, 0};
    uint64_t produced = 0;
    memset(prov, 0, nprov * sizeof(*prov));
    bsi_patch_init(&st, declared, OLD_SIZE, SCRATCH);
    if (bsi_patch_set_mode(&st, mode) != 0) abort();
    if (bsi_patch_set_phase(&st, phase) != 0) abort();
    for (size_t pos = 0; pos <= size; pos += chunk) {
        size_t n = size - pos < chunk ? size - pos : chunk;
        int rc;
        in.ptr = data + pos;
        in.size = n;
        in.pos = 0;
        do {
            memset(out, 0xA5, sizeof out); /* skipped bytes keep this */
            rc = bsi_patch_feed_prov(&st, old, OLD_SIZE, scratch, SCRATCH, &in, &ob, prov, nprov,
                                     flags);
            if (rc < 0) return -1;
            if (produced + ob.pos > MAX_OUT) abort();
            memcpy(full + produced, out, ob.pos);
            produced += ob.pos;
            ob.pos = 0;
        } while (rc == 1);
        if (n == 0) break;
    }
    if (bsi_patch_finish(&st) != 0) return -1;
    return (int64_t)produced;
}

static void check_prov(const uint8_t *data, size_t size, size_t chunk, size_t out_size,
                       uint64_t declared, uint64_t phase, const uint8_t *old, uint8_t *scratch) {
    static uint8_t full[MAX_OUT], skipped[MAX_OUT];
    static uint64_t prov[MAX_OUT / BS + 2], prov2[MAX_OUT / BS + 2];
    uint64_t nprov = (phase + declared) / BS;
    int64_t a = run_prov(data, size, chunk, out_size, declared, phase, 0, old, scratch, full, prov,
                         nprov);
    if (a < 0) return;
    for (uint64_t j = 0; j < nprov; j++) {
        uint64_t v = prov[j], start;
        if (!v) continue;
        if (j == 0 && phase) abort(); /* a partial block cannot be reported */
        reported++;
        start = j * BS - phase;
        if (start + BS > (uint64_t)a) abort();
        if (v == BSI_PROV_ZERO) {
            for (uint64_t i = 0; i < BS; i++)
                if (full[start + i]) abort();
        } else {
            uint64_t k = v - BSI_PROV_COPY;
            if ((k + 1) * BS > OLD_SIZE || memcmp(full + start, old + k * BS, BS)) abort();
        }
    }
    int64_t b = run_prov(data, size, chunk, out_size, declared, phase, BSI_PATCH_SKIP_REPORTED,
                         old, scratch, skipped, prov2, nprov);
    if (b != a || memcmp(prov, prov2, nprov * sizeof(*prov))) abort();
    for (uint64_t j = 0, at = 0; at < (uint64_t)a; j++) {
        /* bytes of image block j (entry j) inside the output: [lo, hi) */
        uint64_t lo = j ? j * BS - phase : 0, hi = (j + 1) * BS - phase;
        if (hi > (uint64_t)a) hi = (uint64_t)a;
        if (!(j < nprov && prov[j]) && memcmp(full + lo, skipped + lo, hi - lo)) abort();
        at = hi;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static uint8_t old[OLD_SIZE];
    static uint8_t scratch[SCRATCH];
    static uint8_t out[256];
    static int init;
    bsi_patch_state st;
    bsi_inbuf in;
    bsi_outbuf ob;
    uint64_t declared = 0, produced = 0;
    size_t chunk, pos;
    if (!init) {
        for (size_t i = 0; i < OLD_SIZE; i++) old[i] = (uint8_t)(i * 31 + (i >> 8));
        init = 1;
    }
    if (size < 2) return 0;
    chunk = (size_t)(data[0] & 0x7F) + 1;
    mode = (data[0] & 0x80) ? BSI_PATCH_DENSE : BSI_PATCH_SPARSE;
    ob.ptr = out;
    ob.size = (size_t)data[1] + 1;
    ob.pos = 0;
    data += 2;
    size -= 2;
    if (size >= 8)
        for (int i = 7; i >= 0; i--) declared = (declared << 8) | data[i];
    if (declared > (1u << 20)) declared = 1u << 20;
    bsi_patch_init(&st, declared, OLD_SIZE, SCRATCH);
    if (bsi_patch_set_mode(&st, mode) != 0) abort();
    if (bsi_patch_set_mode(&st, 2) != BSI_E_INVAL) abort(); /* unknown modes refused */
    for (pos = 0; pos <= size; pos += chunk) {
        size_t n = size - pos < chunk ? size - pos : chunk;
        int rc;
        in.ptr = data + pos;
        in.size = n;
        in.pos = 0;
        do {
            rc = bsi_patch_feed(&st, old, OLD_SIZE, scratch, SCRATCH, &in, &ob);
            if (rc < 0) return 0;
            produced += ob.pos;
            ob.pos = 0;
        } while (rc == 1);
        if (in.pos != in.size) abort(); /* rc 0 must mean "all input taken" */
        if (n == 0) break;
    }
    if (produced && bsi_patch_set_mode(&st, mode) != BSI_E_INVAL) abort(); /* too late */
    if (bsi_patch_finish(&st) == 0 && produced != declared) abort();
    if (produced > declared) abort();
    /* provenance: output buffers of one to three blocks; phase 0 for an even first
     * byte (copies of aligned old blocks line up with the image's blocks), else
     * taken from the two leading bytes */
    check_prov(data, size, chunk, BS + (size_t)data[-1] * 32, declared,
               (data[-2] & 1) ? ((uint64_t)data[-2] * 16 + (uint64_t)data[-1]) % BS : 0, old,
               scratch);
    return 0;
}

#ifdef BSI_FUZZ_STANDALONE
#include "standalone.h"

int main(int argc, char **argv) {
    unsigned long iters = fuzz_standalone(argc, argv, 1 << 16, 512, 4);
    printf("ran %lu inputs, %lu reported blocks checked\n", iters, reported);
    return 0;
}
#endif
