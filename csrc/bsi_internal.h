/* Internal helpers for the native core: little-endian loads/stores, checked
 * arithmetic, visibility. Not part of the public header. */
#ifndef BSI_INTERNAL_H
#define BSI_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define BSI_API __attribute__((visibility("default")))
#define BSI_UNUSED(x) ((void)(x))

static inline uint16_t bsi_load16le(const uint8_t *p) {
    return (uint16_t)(p[0] | ((uint16_t)p[1] << 8));
}
static inline uint32_t bsi_load32le(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t bsi_load64le(const uint8_t *p) {
    return (uint64_t)bsi_load32le(p) | ((uint64_t)bsi_load32le(p + 4) << 32);
}
static inline void bsi_store32le(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void bsi_store64le(uint8_t *p, uint64_t v) {
    bsi_store32le(p, (uint32_t)v);
    bsi_store32le(p + 4, (uint32_t)(v >> 32));
}
static inline uint32_t bsi_load32be(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}
static inline void bsi_store32be(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

/* Checked arithmetic: return 0 on success, 1 on overflow. */
static inline int bsi_add_overflow_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return __builtin_add_overflow(a, b, out);
}
static inline int bsi_mul_overflow_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return __builtin_mul_overflow(a, b, out);
}
/* Is [off, off+len) inside a buffer of `size` bytes? */
static inline int bsi_range_ok(uint64_t off, uint64_t len, uint64_t size) {
    uint64_t end;
    return !bsi_add_overflow_u64(off, len, &end) && end <= size;
}

#ifdef BSI_EXE_CK_SHIFT /* bsipatch.h included first */
/* bsi_exe.c: where the predicted old bytes at off lie (bsi_exe_source, transformed on
 * demand); *n (> 0, off + *n <= size) is cut to what is contiguous there. want >= *n:
 * how many bytes from off the caller will read next (they are made in one go). */
const uint8_t *bsi_exe_source_at(bsi_exe_source *s, uint64_t off, uint64_t *n, uint64_t want);
#endif

#endif
