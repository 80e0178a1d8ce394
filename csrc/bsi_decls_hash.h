/* Bare declarations: SHA-256, block hashing, dm-verity hash-tree levels.
 * Valid cffi cdef as it stands. */

#define BSI_SHA256_DIGEST_SIZE 32
#define BSI_SHA256_BLOCK_SIZE 64
#define BSI_VERITY_MAX_LEVELS 63

/* Streaming SHA-256 state (FIPS 180-4). Caller-allocated; holds no pointers. */
typedef struct {
    uint32_t state[8];
    uint64_t count;     /* bytes absorbed so far */
    uint8_t buf[64];    /* pending partial message block */
    uint32_t buflen;    /* bytes pending in buf (0..63) */
} bsi_sha256_ctx;

void bsi_sha256_init(bsi_sha256_ctx *ctx);
void bsi_sha256_update(bsi_sha256_ctx *ctx, const uint8_t *data, size_t len);
void bsi_sha256_final(bsi_sha256_ctx *ctx, uint8_t *out32);
/* bsi_sha256_update of len bytes into each of two contexts, at once (two-way SHA-NI). */
void bsi_sha256_update_x2(bsi_sha256_ctx *a, const uint8_t *data_a, bsi_sha256_ctx *b,
                          const uint8_t *data_b, size_t len);
void bsi_sha256(const uint8_t *data, size_t len, uint8_t *out32);
/* Apply the compression function to `nblocks` whole 64-byte blocks. */
void bsi_sha256_compress(uint32_t *state8, const uint8_t *blocks, size_t nblocks);

/* CPU dispatch: SHA-NI is chosen once at first use when the CPU has it. */
int bsi_sha256_simd_available(void);      /* 1 when the CPU supports SHA-NI + SSE4.1 */
int bsi_sha256_simd_enable(int enabled);  /* 0 forces portable; returns 1 when SHA-NI is now used */
int bsi_sha256_simd_active(void);
const char *bsi_sha256_impl(void);        /* "sha-ni" or "portable" */

/* Hash `nblocks` equal blocks of `block_size` bytes at `data` into `out`
 * (nblocks * 32 bytes): out[i] = sha256(salt || block_i) (salt_after = 0,
 * dm-verity hash type 1) or sha256(block_i || salt) (salt_after = 1, type 0).
 * Uses up to `threads` threads (<= 0 means 1). Returns BSI_OK or BSI_E_INVAL.
 * `data` and `salt` must not change during the call. */
int bsi_hash_blocks(const uint8_t *data, uint64_t nblocks, uint32_t block_size,
                    const uint8_t *salt, uint32_t salt_len, int salt_after,
                    uint8_t *out, int threads);

/* dm-verity geometry: number of hash levels over `data_blocks` data blocks
 * (0 when data_blocks <= 1), and the hash blocks of each level into
 * level_blocks[0..levels-1] (level 0 holds the data-block digests). */
int bsi_verity_levels(uint64_t data_blocks, uint32_t hash_block_size, uint64_t *level_blocks);

/* Build the tree in `tree` (tree_size bytes, laid out as on disk: top level
 * first, level 0 last) from the `data_blocks` leaf digests at `leaves`
 * (data_blocks * 32 bytes; may point into the tree's level 0). Writes every
 * level with zero padding and the root digest (32 bytes) to `root`.
 * Returns BSI_OK, or BSI_E_INVAL when tree_size does not fit the geometry. */
int bsi_verity_build(uint8_t *tree, uint64_t tree_size, const uint8_t *leaves,
                     uint64_t data_blocks, uint32_t hash_block_size,
                     const uint8_t *salt, uint32_t salt_len, int salt_after,
                     uint8_t *root, int threads);
