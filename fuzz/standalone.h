/* The driver both harnesses use when built without libFuzzer (-DBSI_FUZZ_STANDALONE,
 * e.g. with gcc and its sanitizers): random mutations of one seed file (or of random
 * bytes when none is given), a fixed number of inputs, each fed to
 * LLVMFuzzerTestOneInput. Deterministic (fixed srand seed), so a crash reproduces.
 *
 * fuzz_standalone(argc, argv, cap, random_max, trunc_one_in): argv[1] = seed file
 * (read up to cap bytes), argv[2] = inputs (default 200000); without a seed each input
 * is up to random_max random bytes; one input in trunc_one_in is also cut short.
 * Returns the number of inputs run. Include it once, from the harness's main. */
#ifndef BSI_FUZZ_STANDALONE_H
#define BSI_FUZZ_STANDALONE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static unsigned long fuzz_standalone(int argc, char **argv, size_t cap, size_t random_max,
                                     int trunc_one_in) {
    uint8_t *buf = malloc(cap), *cur = malloc(cap);
    size_t len = 0;
    unsigned long iters = argc > 2 ? strtoul(argv[2], NULL, 10) : 200000;
    if (!buf || !cur) abort();
    srand(12345);
    if (argc > 1) {
        FILE *f = fopen(argv[1], "rb");
        if (f) {
            len = fread(buf, 1, cap, f);
            fclose(f);
        }
    }
    for (unsigned long it = 0; it < iters; it++) {
        size_t n = len ? len : (size_t)rand() % random_max;
        memcpy(cur, buf, n);
        if (!len)
            for (size_t i = 0; i < n; i++) cur[i] = (uint8_t)rand();
        for (int k = rand() % 8; k >= 0 && n; k--) cur[rand() % n] = (uint8_t)rand();
        if (n > 2 && rand() % trunc_one_in == 0) n = (size_t)rand() % n;
        LLVMFuzzerTestOneInput(cur, n);
    }
    free(buf);
    free(cur);
    return iters;
}

#endif
