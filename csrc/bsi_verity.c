/* dm-verity hash-tree geometry and construction (format version 1): each
 * hash block holds hash_block_size / 32 SHA-256 digests of the level below,
 * zero padded; levels are stacked until one block remains; on disk the top
 * level comes first and level 0 (the data-block digests) last. Pure
 * computation on caller-provided memory: no I/O, no allocation. */
#include "bsipatch.h"
#include "bsi_internal.h"

BSI_API int bsi_verity_levels(uint64_t data_blocks, uint32_t hash_block_size,
                              uint64_t *level_blocks) {
    if (hash_block_size < 64 || (hash_block_size & (hash_block_size - 1)) || !level_blocks)
        return BSI_E_INVAL;
    uint64_t per = hash_block_size / BSI_SHA256_DIGEST_SIZE;
    int levels = 0;
    uint64_t x = data_blocks;
    while (x > 1) {
        if (levels >= BSI_VERITY_MAX_LEVELS) return BSI_E_INVAL;
        x = x / per + (x % per != 0);
        level_blocks[levels++] = x;
    }
    return levels;
}

BSI_API int bsi_verity_build(uint8_t *tree, uint64_t tree_size, const uint8_t *leaves,
                             uint64_t data_blocks, uint32_t hash_block_size,
                             const uint8_t *salt, uint32_t salt_len, int salt_after,
                             uint8_t *root, int threads) {
    uint64_t lb[BSI_VERITY_MAX_LEVELS], off[BSI_VERITY_MAX_LEVELS];
    if (data_blocks == 0 || !leaves || !root) return BSI_E_INVAL;
    int levels = bsi_verity_levels(data_blocks, hash_block_size, lb);
    if (levels < 0) return levels;
    uint64_t total = 0;
    for (int i = levels - 1; i >= 0; i--) {
        off[i] = total;
        total += lb[i];
    }
    uint64_t bytes;
    if (bsi_mul_overflow_u64(total, hash_block_size, &bytes) || bytes != tree_size)
        return BSI_E_INVAL;
    if (levels == 0) {
        memcpy(root, leaves, BSI_SHA256_DIGEST_SIZE);
        return BSI_OK;
    }
    if (!tree) return BSI_E_INVAL;
    const uint64_t hbs = hash_block_size;
    uint64_t below = data_blocks; /* digests in the level being packed */
    for (int i = 0; i < levels; i++) {
        uint8_t *dst = tree + off[i] * hbs;
        uint64_t used = below * BSI_SHA256_DIGEST_SIZE, size = lb[i] * hbs;
        if (i == 0) {
            memmove(dst, leaves, used);
        } else {
            int rc = bsi_hash_blocks(tree + off[i - 1] * hbs, lb[i - 1], hash_block_size, salt,
                                     salt_len, salt_after, dst, threads);
            if (rc < 0) return rc;
        }
        memset(dst + used, 0, size - used);
        below = lb[i];
    }
    return bsi_hash_blocks(tree + off[levels - 1] * hbs, 1, hash_block_size, salt, salt_len,
                           salt_after, root, 1);
}
