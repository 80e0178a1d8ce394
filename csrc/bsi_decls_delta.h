/* Bare declarations: suffix array, delta search, streaming patch applier.
 * Valid cffi cdef as it stands. */
