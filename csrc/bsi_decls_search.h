/* Bare declarations: search accelerators - a fast first alignment of two files
 * (bsi_align.c) and the 8-gram filter of the suffix-array search (bsi_diff.c).
 * Valid cffi cdef as it stands. */

#define BSI_ALIGN_K 16        /* anchor window bytes */
#define BSI_ALIGN_SAMPLE 16   /* about one window in this many is an anchor candidate */
#define BSI_ALIGN_JOIN 4096   /* matches with one displacement this close are one range */
#define BSI_ALIGN_MIN 32      /* shorter ranges are not reported */

/* Slots (uint64 each, zeroed by the caller) of the anchor table for old_size bytes. */
uint64_t bsi_align_table_slots(uint64_t old_size);

/* Aligned ranges of new against old, in new order, disjoint: out[3i] = new offset,
 * out[3i+1] = length (>= BSI_ALIGN_MIN), out[3i+2] = old offset. out_cap (ranges) must
 * be at least new_size / BSI_ALIGN_MIN + 1. old_size < 2^32 - 2. Returns the number of
 * ranges or a negative BSI_E_*. */
int64_t bsi_align_ranges(const uint8_t *old, uint64_t old_size, const uint8_t *new_,
                         uint64_t new_size, uint64_t *table, uint64_t table_slots,
                         uint64_t *out, uint64_t out_cap);

/* The heaviest chain of an executable map's pieces (exemap.py _monotone): pieces i in
 * (old address, len, delta) order, key[i] their new address, keys[] the distinct keys
 * sorted (nk of them). A piece's chain weight is its len plus the heaviest chain
 * weight of a piece with a smaller old address and a smaller key (ties: the later
 * piece). Workspace (the caller's, any contents): tree_w, tree_j of nk + 1 entries,
 * weight, prev of n. Writes the chain, last piece first, to chain (n entries) and
 * returns its length, or BSI_E_INVAL (a key not in keys, pieces out of order). */
int64_t bsi_map_chain(const uint64_t *va, const uint64_t *len, const int64_t *key, uint64_t n,
                      const int64_t *keys, uint64_t nk, uint64_t *tree_w, int64_t *tree_j,
                      uint64_t *weight, int64_t *prev, int64_t *chain);

/* The 8-gram filter: one bit per hash of every 8-byte window of the index, so the
 * search can tell, with one memory access, that no match of 8 bytes or more starts at
 * a place (then it skips the suffix-array lookup). Bits: 1 << log2, where
 * bsi_gram_filter_log2(n) gives about 8 per window (0: too small to bother). */
uint32_t bsi_gram_filter_log2(uint64_t n);
int bsi_gram_filter_build(const uint8_t *idx, uint64_t n, uint64_t *filter, uint32_t log2);

/* bsi_diff_search_parts with an 8-gram filter of idx (filter NULL: none). */
int64_t bsi_diff_search_filtered(const uint8_t *idx, uint64_t idx_size, const bsi_sa_part *parts,
                                 uint64_t n_parts, const uint8_t *new_, uint64_t new_size,
                                 uint64_t start, uint64_t end, bsi_op *ops, uint64_t ops_cap,
                                 uint64_t *stopped, const uint64_t *filter, uint32_t filter_log2);
