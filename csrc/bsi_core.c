/* Version and error names for the native core. No I/O. */
#include "bsipatch.h"
#include "bsi_internal.h"

#ifndef BSI_VERSION_STRING
#error "BSI_VERSION_STRING must be defined by the build (csrc/build_ffi.py)"
#endif

BSI_API const char *bsi_version(void) { return BSI_VERSION_STRING; }

BSI_API const char *bsi_error_name(int code) {
    switch (code) {
    case BSI_OK: return "BSI_OK";
    case BSI_E_INVAL: return "BSI_E_INVAL";
    case BSI_E_NOMEM: return "BSI_E_NOMEM";
    case BSI_E_CORRUPT: return "BSI_E_CORRUPT";
    case BSI_E_RANGE: return "BSI_E_RANGE";
    case BSI_E_OVERFLOW: return "BSI_E_OVERFLOW";
    case BSI_E_STATE: return "BSI_E_STATE";
    case BSI_E_TRUNCATED: return "BSI_E_TRUNCATED";
    case BSI_E_THREAD: return "BSI_E_THREAD";
    default: return code >= 0 ? "BSI_OK" : "BSI_E_UNKNOWN";
    }
}

BSI_API int bsi_all_zero(const uint8_t *p, size_t n) {
    uint64_t acc = 0;
    size_t i = 0;
    if (n && !p) return BSI_E_INVAL;
    /* 64 bytes per step, OR-ed together: the compiler vectorises the inner loop */
    for (; i + 64 <= n; i += 64) {
        uint64_t w[8];
        memcpy(w, p + i, 64);
        acc |= w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7];
        if (acc) return 0;
    }
    for (; i < n; i++) acc |= p[i];
    return acc == 0;
}

BSI_API int bsi_zero_pages(const uint8_t *p, uint64_t n_pages, uint32_t page, uint8_t *out) {
    if ((n_pages && (!p || !out)) || page == 0) return BSI_E_INVAL;
    for (uint64_t i = 0; i < n_pages; i++) out[i] = (uint8_t)bsi_all_zero(p + i * page, page);
    return BSI_OK;
}

BSI_API int bsi_ct_equal(const uint8_t *a, const uint8_t *b, size_t n) {
    /* constant time in the contents: every byte is looked at, no early exit */
    uint8_t acc = 0;
    if (n && (!a || !b)) return BSI_E_INVAL;
    for (size_t i = 0; i < n; i++) acc |= (uint8_t)(a[i] ^ b[i]);
    return acc == 0;
}
