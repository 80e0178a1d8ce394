/* Bare declarations: suffix array, delta search, streaming patch applier.
 * Valid cffi cdef as it stands. */

/* ---- suffix array (bsi_sais.c) ---------------------------------------------------- */

/* Bytes of workspace bsi_sais32 (wide=0) / bsi_sais64 (wide=1) need for n symbols. */
size_t bsi_sais_workspace_size(uint64_t n, int wide);
/* Suffix array of text[0..n) into sa[0..n); int32 indices need n < 2^31 - 1. */
int bsi_sais32(const uint8_t *text, int32_t *sa, int64_t n, void *workspace, size_t workspace_size);
int bsi_sais64(const uint8_t *text, int64_t *sa, int64_t n, void *workspace, size_t workspace_size);

/* ---- operations (bsi_diff.c, bsi_patch.c) ----------------------------------------- */

#define BSI_OP_COPY 0    /* new = old[old_off .. old_off+len) */
#define BSI_OP_ADD 1     /* new = old[old_off ..] + diff bytes (mod 256) */
#define BSI_OP_INSERT 2  /* new = literal bytes */
#define BSI_OP_ZERO 3    /* new = zero bytes */
#define BSI_OP_GAP 4     /* (diff-internal) not matched yet: to be searched */

typedef struct {
    uint64_t len;
    uint64_t old_off;
    uint32_t kind;
    uint32_t reserved;
} bsi_op;

#define BSI_BLOCK_SIZE 4096

/* ---- delta search (bsi_diff.c) ---------------------------------------------------- */

/* Slots (uint64 each) of the block hash table for an old image of old_size bytes. */
uint64_t bsi_prepass_table_slots(uint64_t old_size);
/* Upper bound on the ops the pre-pass writes for a new image of new_size bytes. */
uint64_t bsi_prepass_max_ops(uint64_t new_size);
/* Block pre-pass, in steps so the caller can skip holes and release pages between
 * chunks. 1) bsi_prepass_index over old blocks [first_block, end_block) (table
 * zeroed once by the caller): non-zero blocks go into the hash table, zero blocks
 * get old_claimed[i] = 2. 2) bsi_prepass_scan slides over new up to `end`: every
 * 4096-byte window equal to an old block (any new offset) becomes a COPY op (its
 * old block gets old_claimed = 1), zero windows ZERO ops, the rest GAP ops; and
 * bsi_prepass_zero declares new[pos..end) zero (a hole) without reading it.
 * 3) bsi_prepass_finish closes the last gap, extends copies and zero runs byte by
 * byte into the gaps, and merges. Ops accumulate in ops[0..st->n); each call
 * returns the op count or a negative BSI_E_*. */
typedef struct {
    uint64_t pos;        /* next new offset to look at */
    uint64_t gap_start;  /* ops cover new[0..gap_start); [gap_start, pos) is an open gap */
    uint64_t n;          /* ops written */
} bsi_prepass_state;

int bsi_prepass_index(const uint8_t *old, uint64_t old_size, uint64_t first_block,
                      uint64_t end_block, uint64_t *table, uint64_t table_slots,
                      uint8_t *old_claimed);
int64_t bsi_prepass_scan(bsi_prepass_state *st, const uint8_t *old, uint64_t old_size,
                         const uint8_t *new_, uint64_t new_size, uint64_t end,
                         const uint64_t *table, uint64_t table_slots, uint8_t *old_claimed,
                         bsi_op *ops, uint64_t ops_cap);
int64_t bsi_prepass_zero(bsi_prepass_state *st, uint64_t new_size, uint64_t end, bsi_op *ops,
                         uint64_t ops_cap);
int64_t bsi_prepass_finish(bsi_prepass_state *st, const uint8_t *old, uint64_t old_size,
                           const uint8_t *new_, uint64_t new_size, bsi_op *ops, uint64_t ops_cap);

/* Starts of the suffix-array ranges of every 2-byte prefix of idx: bkt[65537]. */
int bsi_sa_buckets(const uint8_t *idx, uint64_t n, uint64_t *bkt);

/* bsdiff-style approximate-match search of new[start..end) against the indexed
 * text idx[0..idx_size) with its suffix array (sa32 or sa64, the other NULL) and
 * optionally its bsi_sa_buckets table (bkt, or NULL).
 * Writes ADD ops (old_off in index coordinates) and INSERT ops covering
 * [start, *stopped) where *stopped == end unless ops_cap ran out (call again from
 * *stopped). Returns the number of ops or a negative BSI_E_*. */
int64_t bsi_diff_search(const uint8_t *idx, uint64_t idx_size, const int32_t *sa32,
                        const int64_t *sa64, const uint64_t *bkt, const uint8_t *new_, uint64_t new_size,
                        uint64_t start, uint64_t end, bsi_op *ops, uint64_t ops_cap,
                        uint64_t *stopped);

/* A suffix array over part of the index, so that parts can be sorted in parallel:
 * the suffixes of idx[off .. off+len) (positions relative to off, in sa32 or sa64,
 * the other NULL) and optionally its bsi_sa_buckets table (bkt, or NULL). */
typedef struct {
    uint64_t off;
    uint64_t len;
    const int32_t *sa32;
    const int64_t *sa64;
    const uint64_t *bkt;
} bsi_sa_part;

#define BSI_MAX_SA_PARTS 16

/* bsi_diff_search over an index sorted in n_parts (1..BSI_MAX_SA_PARTS) parts: a
 * lookup takes the longest match of any part (matches do not cross a part's end;
 * the approximate extension around them does). Same ops, results and errors. */
int64_t bsi_diff_search_parts(const uint8_t *idx, uint64_t idx_size, const bsi_sa_part *parts,
                              uint64_t n_parts, const uint8_t *new_, uint64_t new_size,
                              uint64_t start, uint64_t end, bsi_op *ops, uint64_t ops_cap,
                              uint64_t *stopped);

/* Map old offsets of ADD ops from index coordinates to old coordinates. The index
 * is the concatenation of old ranges [map_old[i], map_old[i]+map_len[i]). Ops
 * crossing a range boundary are split. Writes to out (cap out_cap); returns count. */
int64_t bsi_ops_remap(const bsi_op *ops, uint64_t n, const uint64_t *map_old,
                      const uint64_t *map_len, uint64_t nmap, bsi_op *out, uint64_t out_cap);

/* Merge neighbouring ops that continue each other (COPY/ADD contiguous in old merge
 * into ADD; INSERT and ZERO runs merge), drop empty ones, check every old range and
 * that the ops cover exactly new_size bytes. In place; returns the new count. */
int64_t bsi_ops_normalize(bsi_op *ops, uint64_t n, const uint8_t *old, uint64_t old_size,
                          const uint8_t *new_, uint64_t new_size);

/* Ops packed into bytes (diff-internal: the search's results are kept packed until
 * they are assembled, at about a fifth of their size): per op a varint of
 * (len << 3 | kind), then for COPY and ADD a varint of the zigzagged distance of its
 * old offset from the previous COPY/ADD op's old end. bsi_ops_pack writes at most
 * BSI_OP_PACKED_MAX bytes per op and returns the bytes written (BSI_E_INVAL: a kind
 * above BSI_OP_GAP or a len of 2^61 or more; BSI_E_NOMEM: out_cap too small).
 * bsi_ops_unpack reads exactly n ops and returns the bytes read (BSI_E_TRUNCATED: the
 * bytes end early; BSI_E_CORRUPT: a varint too long or a kind out of range). */
#define BSI_OP_PACKED_MAX 20

/* Turn stitched matches into INSERT ops: ADD ops that jump at least `far` bytes in old
 * (from the old end of the last op with old bytes that stays) and match fewer than
 * `min_match` of their bytes. Where new has no counterpart in old, the search stitches
 * such short matches of common strings from all over old; with megabytes of them they
 * cost more in the control, runs and difference streams than the literal bytes they
 * replace (zstd finds those strings among the other literals). Nothing changes unless
 * they add up to at least `min_bytes`: a few of them (a small update) are likelier
 * moved code, and a small patch has few literals for zstd to match them in. ops cover
 * new from its start; every op is checked first. In place; returns the number of ops
 * changed (normalise afterwards to merge the INSERT runs). */
int64_t bsi_ops_prune(bsi_op *ops, uint64_t n, const uint8_t *old, uint64_t old_size,
                      const uint8_t *new_, uint64_t new_size, uint64_t min_match, uint64_t far,
                      uint64_t min_bytes);
int64_t bsi_ops_pack(const bsi_op *ops, uint64_t n, uint8_t *out, uint64_t out_cap);
int64_t bsi_ops_unpack(const uint8_t *in, uint64_t in_len, bsi_op *ops, uint64_t n);

/* ---- segment encoding (bsi_diff.c) ------------------------------------------------ */

typedef struct {
    /* cursor into the ops array (in/out) */
    uint64_t op_index;
    uint64_t op_skip;      /* bytes of ops[op_index] already encoded */
    uint64_t new_pos;      /* output offset of the cursor (in/out) */
    /* results for the segment just encoded */
    uint64_t out_len;
    uint64_t n_ops;
    uint64_t ctrl_len;
    uint64_t runs_len;     /* zero-run lengths */
    uint64_t nruns_len;    /* non-zero-run lengths */
    uint64_t lit_len;
    uint64_t diff_len;
    uint64_t kind_bytes[4];
    uint64_t kind_ops[4];
    /* input, kept across calls: 0 = sparse difference stream (zero runs and non-zero
     * runs in the runs sections, only non-zero bytes in diff), 1 = dense (every ADD
     * difference byte in diff, zeros included; the runs sections stay empty) */
    uint64_t dense;
} bsi_seg_enc;

/* Encode ops from the cursor into one segment of at most max_out output bytes
 * (fewer when a section buffer fills: a segment's payload is bounded by the
 * capacities, its output by max_out). Sections go to ctrl/runs (zero-run
 * lengths)/nruns (non-zero-run lengths)/lit/diff
 * buffers with the given capacities (enc->dense: the dense difference stream, runs
 * unused). Returns 0 or a negative BSI_E_*. */
int bsi_seg_encode(bsi_seg_enc *enc, const bsi_op *ops, uint64_t n_ops, const uint8_t *old,
                   uint64_t old_size, const uint8_t *new_, uint64_t new_size, uint64_t max_out,
                   uint8_t *ctrl, uint64_t ctrl_cap, uint8_t *runs, uint64_t runs_cap,
                   uint8_t *nruns, uint64_t nruns_cap,
                   uint8_t *lit, uint64_t lit_cap, uint8_t *diff, uint64_t diff_cap);

/* ---- streaming applier (bsi_patch.c) ---------------------------------------------- */

#define BSI_SEG_HEADER_SIZE 56

typedef struct {
    const uint8_t *ptr;
    size_t size;
    size_t pos;
} bsi_inbuf;

typedef struct {
    uint8_t *ptr;
    size_t size;
    size_t pos;
} bsi_outbuf;

typedef struct {
    uint32_t phase;
    int32_t error;
    uint64_t out_total;       /* output bytes the segment must produce */
    uint64_t out_done;
    uint64_t old_size;
    uint64_t scratch_cap;
    uint32_t hdr_have;
    uint32_t run_nonzero;     /* current diff run is a non-zero run */
    uint8_t hdr[56];
    uint64_t n_ops, ctrl_len, runs_len, nruns_len, lit_len, diff_len;
    uint64_t buf_have;        /* bytes of ctrl+runs+nruns+lit buffered in scratch */
    uint64_t ctrl_pos, runs_pos, nruns_pos, lit_pos, diff_done, ops_done;
    uint32_t cur_kind;
    uint32_t cur_active;
    uint64_t cur_left;
    uint64_t cur_old;
    uint64_t prev_old_end;
    uint64_t run_left;
    uint64_t kind_bytes[4];   /* output bytes made by COPY, ADD, INSERT, ZERO so far */
    uint64_t prov_phase;      /* output offset of the segment modulo 4096 (provenance) */
    uint32_t dense;           /* the difference stream is dense (bsi_patch_set_mode) */
    uint32_t reserved;
    uint64_t pf_pos, pf_prev_end, pf_ops; /* the control section read ahead (prefetch) */
} bsi_patch_state;

/* Start a segment that must produce out_total bytes from an old image of old_size
 * bytes, buffering at most scratch_cap bytes of sections. */
int bsi_patch_init(bsi_patch_state *st, uint64_t out_total, uint64_t old_size,
                   uint64_t scratch_cap);
/* Feed decompressed segment bytes (any amount, may be 0); writes output to out.
 * Returns 1 when it stopped because out is full, 0 when it needs more input (or
 * is done), negative BSI_E_* on error (sticky). */
int bsi_patch_feed(bsi_patch_state *st, const uint8_t *old, uint64_t old_size,
                   uint8_t *scratch, uint64_t scratch_cap, bsi_inbuf *in, bsi_outbuf *out);
/* 0 when the segment is complete and exact, else a negative BSI_E_*. */
int bsi_patch_finish(bsi_patch_state *st);

/* Provenance of the whole 4096-byte blocks of the image that the segment makes, for
 * bsi_patch_feed_prov. Entry j is the image block (segment offset - phase) / 4096 + j,
 * where phase = the segment's output offset modulo 4096 (bsi_patch_set_phase; 0 by
 * default), so entry 0 is a partial block when phase > 0. The caller zero-fills prov; the
 * applier sets an entry only for a block made entirely by ONE operation:
 *   BSI_PROV_ZERO                 one ZERO op: the block is all zero;
 *   BSI_PROV_COPY + k             one COPY op from old offset 4096 * k (4096-aligned):
 *                                 the block equals old block k;
 * every other block stays BSI_PROV_NONE (made by ADD/INSERT, by several ops, or a
 * partial block). Whole-block runs are reported only when the output buffer has room
 * for at least one whole block. */
#define BSI_PROV_NONE 0
#define BSI_PROV_ZERO 1
#define BSI_PROV_COPY 2
/* flags: do not write the bytes of blocks reported ZERO or COPY (their place in the
 * output buffer is left as it was; out->pos still advances over them). */
#define BSI_PATCH_SKIP_REPORTED 1

/* Modes for bsi_patch_set_mode. BSI_PATCH_DENSE: the segment's difference stream is
 * dense: every ADD output byte takes the next diff byte (zeros included); both runs
 * sections must be empty (else BSI_E_CORRUPT). Default: sparse (runs sections). */
#define BSI_PATCH_SPARSE 0
#define BSI_PATCH_DENSE 1
/* Set the mode right after bsi_patch_init, before any feed (BSI_E_INVAL otherwise, or
 * for an unknown mode). */
int bsi_patch_set_mode(bsi_patch_state *st, uint32_t mode);

/* Set the phase (0..4095) right after bsi_patch_init, before any feed. */
int bsi_patch_set_phase(bsi_patch_state *st, uint64_t phase);
/* bsi_patch_feed that also reports provenance into prov[0 .. prov_cap), which must
 * hold (phase + out_total) / 4096 entries. prov == NULL behaves as bsi_patch_feed
 * (flags must be 0 then). Same returns as bsi_patch_feed. */
int bsi_patch_feed_prov(bsi_patch_state *st, const uint8_t *old, uint64_t old_size,
                        uint8_t *scratch, uint64_t scratch_cap, bsi_inbuf *in, bsi_outbuf *out,
                        uint64_t *prov, uint64_t prov_cap, uint32_t flags);
