/* Bare declarations: SHA-256, block hashing, dm-verity hash-tree levels.
 * Valid cffi cdef as it stands. */
