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
