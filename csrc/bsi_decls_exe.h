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
