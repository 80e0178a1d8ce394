/* libFuzzer harness for the streaming patch applier (csrc/bsi_patch.c).
 *
 * Input: byte 0 picks the feed chunk size (1..256), byte 1 the output buffer size
 * (1..256); the rest is a segment payload fed to bsi_patch_feed against a fixed
 * 64 KiB old image. The declared output size is taken from the payload's own
 * header (capped at 1 MiB) so the parser gets past its first check.
 *
 * libFuzzer:   clang -g -O1 -fsanitize=fuzzer,address,undefined -Icsrc \
 *                -DBSI_VERSION_STRING='"fuzz"' fuzz/fuzz_patch.c csrc/bsi_patch.c csrc/bsi_core.c
 * without clang: gcc -g -O1 -fsanitize=address,undefined -DBSI_FUZZ_STANDALONE -Icsrc \
 *                -DBSI_VERSION_STRING='"fuzz"' fuzz/fuzz_patch.c csrc/bsi_patch.c csrc/bsi_core.c
 *                (runs random mutations of the seed files given as arguments)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bsipatch.h"

#define OLD_SIZE 65536
#define SCRATCH 65536

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
    chunk = (size_t)data[0] + 1;
    ob.ptr = out;
    ob.size = (size_t)data[1] + 1;
    ob.pos = 0;
    data += 2;
    size -= 2;
    if (size >= 8)
        for (int i = 7; i >= 0; i--) declared = (declared << 8) | data[i];
    if (declared > (1u << 20)) declared = 1u << 20;
    bsi_patch_init(&st, declared, OLD_SIZE, SCRATCH);
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
    if (bsi_patch_finish(&st) == 0 && produced != declared) abort();
    if (produced > declared) abort();
    return 0;
}

#ifdef BSI_FUZZ_STANDALONE
int main(int argc, char **argv) {
    static uint8_t buf[1 << 16], cur[1 << 16];
    size_t len = 0;
    unsigned long iters = argc > 2 ? strtoul(argv[2], NULL, 10) : 200000;
    srand(12345);
    if (argc > 1) {
        FILE *f = fopen(argv[1], "rb");
        if (f) {
            len = fread(buf, 1, sizeof buf, f);
            fclose(f);
        }
    }
    for (unsigned long it = 0; it < iters; it++) {
        size_t n = len ? len : (size_t)(rand() % 512);
        memcpy(cur, buf, n);
        if (!len)
            for (size_t i = 0; i < n; i++) cur[i] = (uint8_t)rand();
        for (int k = rand() % 8; k >= 0 && n; k--) cur[rand() % n] = (uint8_t)rand();
        if (n > 2 && rand() % 4 == 0) n = (size_t)rand() % n;
        LLVMFuzzerTestOneInput(cur, n);
    }
    printf("ran %lu inputs\n", iters);
    return 0;
}
#endif
