/* Bare declarations: the executable reference transform (bsi_exe.c).
 * Valid cffi cdef as it stands. Format: docs/patch-format.md, "Executable transform". */

/* One range of the old image's virtual addresses and where it lies in the new image:
 * old_va .. old_va+len maps to old_va+delta .. old_va+len+delta. */
typedef struct {
    uint64_t old_va;
    uint64_t len;
    int64_t delta;
} bsi_exe_map;

/* Region kinds: where in the old image references are looked for. */
#define BSI_EXE_LOAD 0      /* a loadable segment: file [off, off+len) is mapped at va */
#define BSI_EXE_X86_64 1    /* x86-64 code: call/jmp/jcc rel32 and RIP-relative disp32 */
#define BSI_EXE_A64 2       /* AArch64 code: B/BL, B.cond, CBZ, TBZ, LDR literal, ADR, ADRP+lo12 */
#define BSI_EXE_RELA 3      /* Elf64_Rela table (arg = e_machine): r_offset, addends, targets */
#define BSI_EXE_SYM 4       /* Elf64_Sym table: st_value of defined symbols */
#define BSI_EXE_EHHDR 5     /* .eh_frame_hdr: its datarel sdata4 search table */
#define BSI_EXE_EHFRAME 6   /* .eh_frame: FDE pc_begin (pcrel sdata4) */
#define BSI_EXE_PTR64 7     /* an array of 64-bit pointers (init/fini arrays) */
#define BSI_EXE_KINDS 8

typedef struct {
    uint64_t off;   /* file offset in the old image */
    uint64_t len;   /* bytes */
    uint64_t va;    /* virtual address of off */
    uint32_t kind;  /* BSI_EXE_* */
    uint32_t arg;   /* BSI_EXE_RELA: the ELF e_machine (62 x86-64, 183 AArch64); else 0 */
} bsi_exe_region;

/* Largest counts a patch may declare (the applier checks them before allocating). */
#define BSI_EXE_MAX_REGIONS 4096
#define BSI_EXE_MAX_MAP 1048576

/* Check regions and map: every region inside a buffer of size bytes, kinds known, at
 * least one LOAD region, map entries non-empty, sorted by old_va, not overlapping,
 * no overflow. 0 or BSI_E_CORRUPT / BSI_E_INVAL. */
int bsi_exe_check(uint64_t size, const bsi_exe_region *regions, uint64_t n_regions,
                  const bsi_exe_map *map, uint64_t n_map);

/* Rewrite, in buf (a private copy of the old image), every reference found in the
 * regions so that it points where the map says its target went, as seen from where
 * the map says the reference itself went: the old image as the new one would be if
 * only addresses had moved. Deterministic in (buf, regions, map): the diff and the
 * applier compute the same bytes. References whose place or target the map does not
 * cover, or whose new value does not fit, are left alone. Checks its arguments as
 * bsi_exe_check does. Returns the number of references rewritten, or a negative
 * BSI_E_*. stats (or NULL) receives per-kind counts of references found [0..8). */
int64_t bsi_exe_transform(uint8_t *buf, uint64_t size, const bsi_exe_region *regions,
                          uint64_t n_regions, const bsi_exe_map *map, uint64_t n_map,
                          uint64_t *stats);

/* Decode n_map map entries of a transform body from data[*pos..size) into map
 * (docs/patch-format.md: per entry the varints gap from the previous entry's end,
 * len, zigzag delta change). Each varint is at most 10 bytes and below 2**64; each
 * entry needs len > 0, old_va + len < 2**64 and a delta in int64. Advances *pos.
 * Returns 0, BSI_E_TRUNCATED (a varint runs past the end, is too long or too large)
 * or BSI_E_RANGE (an entry out of range); *pos then says where the bad entry starts. */
int bsi_exe_unpack_map(const uint8_t *data, uint64_t size, uint64_t *pos, bsi_exe_map *map,
                       uint64_t n_map);

/* Entries of the workspace bsi_exe_transform_indexed takes (uint32_t each, 256 KiB). */
#define BSI_EXE_INDEX_LEN 65537

/* bsi_exe_transform, its map lookups sped up by an index of the map by address that it
 * builds in index (the caller's workspace of BSI_EXE_INDEX_LEN entries; NULL: none).
 * Same result, byte for byte, as bsi_exe_transform. */
int64_t bsi_exe_transform_indexed(uint8_t *buf, uint64_t size, const bsi_exe_region *regions,
                                  uint64_t n_regions, const bsi_exe_map *map, uint64_t n_map,
                                  uint64_t *stats, uint32_t *index);

/* ---- the predicted old image on demand (an applier's bounded memory) -------------
 * Instead of a private copy of the whole old image with every reference rewritten,
 * an applier may read the predicted old image through a bsi_exe_source: bytes of the
 * bulky "windowed" kinds (X86_64, A64 code, RELA tables) are transformed when read,
 * exactly the range asked for (at most BSI_EXE_CHUNK bytes at a time), into scratch;
 * every other byte is read from base, the old image with the remaining kinds applied
 * eagerly (bsi_exe_transform_eager). The bytes read are exactly those of
 * bsi_exe_transform on the whole image when the caller's conditions hold: windowed
 * regions pairwise disjoint and disjoint from every other non-LOAD region
 * (bsipatch/delta/exewindow.py checks), and no relocated pointer written in place
 * falling in a windowed region (bsi_exe_transform_eager reports those). All memory is
 * the caller's and must stay valid and unchanged (but for what C updates) while used. */

/* One group (one ELF file) of the transform: its regions and map. */
typedef struct {
    const bsi_exe_region *regions;
    uint64_t n_regions;
    const bsi_exe_map *map;
    uint64_t n_map;
} bsi_exe_group;

/* One windowed region (kind X86_64, A64 or RELA) and the group it belongs to. */
typedef struct {
    bsi_exe_region r;
    uint64_t group;    /* index into the source's groups */
    uint64_t ck_first; /* X86_64: its scan checkpoints are ckpt[ck_first ..] (init sets) */
    uint64_t ck_known; /* checkpoints known so far (C updates) */
} bsi_exe_wregion;

/* x86-64 scan checkpoints: one byte per 2^BSI_EXE_CK_SHIFT bytes of a region (plus 2). */
#define BSI_EXE_CK_SHIFT 6
/* Most bytes one read transforms; scratch holds 2 * BSI_EXE_CHUNK + 128 bytes. */
#define BSI_EXE_CHUNK 65536

typedef struct {
    const uint8_t *base;         /* the old image, eager kinds applied; size bytes */
    const uint8_t *orig;         /* the old image itself (windowed regions are read here:
                                    base holds the same bytes there, orig's pages may be
                                    dropped and re-read) */
    uint64_t size;
    const bsi_exe_group *groups;
    uint64_t n_groups;
    bsi_exe_wregion *wregions;   /* sorted by off, disjoint, inside the image */
    uint64_t n_wregions;
    uint8_t *ckpt;               /* n_ckpt entries */
    uint64_t n_ckpt;
    uint32_t *index;             /* BSI_EXE_INDEX_LEN entries: the map index */
    uint8_t *scratch;            /* 2 * BSI_EXE_CHUNK + 128 bytes */
    /* set by bsi_exe_source_init, updated by reads: */
    uint64_t index_group, reads, walked;
    uint64_t have_off, have_len; /* scratch holds the predicted bytes [have_off, +have_len) */
} bsi_exe_source;

/* Check a source the caller filled (the fields above the comment) and reset its
 * checkpoints and counts. 0, or BSI_E_INVAL (a bad field: windowed regions not sorted,
 * overlapping or outside the image, a bad kind or group, too few checkpoints). */
int bsi_exe_source_init(bsi_exe_source *src);

/* Copy the predicted old bytes [off, off+n) into dst. 0, or BSI_E_RANGE / BSI_E_INVAL. */
int bsi_exe_source_read(bsi_exe_source *src, uint64_t off, uint64_t n, uint8_t *dst);

/* The first half of the windowed transform, in place on buf (a private copy of the old
 * image): every region of a kind that is not windowed (SYM, EHHDR, EHFRAME, PTR64), and
 * of RELA regions only the relocated pointers in place, in region order, as
 * bsi_exe_transform_indexed does them. *conflicts (if not NULL) receives the number of
 * pointers in place that overlap one of the n_avoid regions in avoid (sorted by off,
 * disjoint): when it is not 0 the windowed source would not give the transform's bytes.
 * Returns the number of references rewritten, or a negative BSI_E_*. */
int64_t bsi_exe_transform_eager(uint8_t *buf, uint64_t size, const bsi_exe_region *regions,
                                uint64_t n_regions, const bsi_exe_map *map, uint64_t n_map,
                                uint32_t *index, const bsi_exe_region *avoid, uint64_t n_avoid,
                                uint64_t *conflicts);

/* bsi_patch_feed (csrc/bsi_patch.c) reading the old image through src (its size is
 * src->size): COPY and ADD take their old bytes from the predicted old image. */
int bsi_patch_feed_src(bsi_patch_state *st, bsi_exe_source *src, uint8_t *scratch,
                       uint64_t scratch_cap, bsi_inbuf *in, bsi_outbuf *out);
