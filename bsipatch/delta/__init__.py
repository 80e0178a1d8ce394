"""Delta engine: make and apply binary patches.

``diff`` computes operations and writes bsipatch patches, ``apply`` streams them onto
an old image, ``patchformat`` is the byte layout of a patch, ``bsdiff40`` imports and
exports classic BSDIFF40 patches. No policy or trust decisions here.
"""
