/* Public header of bsipatch's native core: guards, includes, then the bare
 * declarations (the same text cffi reads as its cdef). */
#ifndef BSIPATCH_H
#define BSIPATCH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "bsi_decls.h"
#include "bsi_decls_hash.h"
#include "bsi_decls_delta.h"
#include "bsi_decls_exe.h"
#include "bsi_decls_search.h"

#ifdef __cplusplus
}
#endif

#endif
