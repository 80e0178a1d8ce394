/* Bare declarations shared by the whole native core: error codes and version.
 * Valid cffi cdef as it stands: no includes, no macros with bodies, no #if.
 * Area-specific declarations live in bsi_decls_<area>.h beside this file. */

#define BSI_OK 0
#define BSI_E_INVAL -1      /* an argument is out of range or inconsistent */
#define BSI_E_NOMEM -2      /* caller-provided workspace too small */
#define BSI_E_CORRUPT -3    /* input data (a patch) is malformed */
#define BSI_E_RANGE -4      /* an offset/length from input points outside a buffer */
#define BSI_E_OVERFLOW -5   /* input declares more data than allowed */
#define BSI_E_STATE -6      /* call made in the wrong state (e.g. after finish) */
#define BSI_E_TRUNCATED -7  /* input ended early */
#define BSI_E_THREAD -8     /* a worker thread could not be started */

const char *bsi_version(void);
const char *bsi_error_name(int code);
/* 1 when p[0..n) is all zero bytes, else 0 (n == 0: 1). */
int bsi_all_zero(const uint8_t *p, size_t n);
/* out[i] = 1 when page i (page bytes at p + i * page) is all zero, else 0. */
int bsi_zero_pages(const uint8_t *p, uint64_t n_pages, uint32_t page, uint8_t *out);
/* 1 when a[0..n) == b[0..n), else 0; the time taken does not depend on the bytes. */
int bsi_ct_equal(const uint8_t *a, const uint8_t *b, size_t n);
