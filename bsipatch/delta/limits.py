"""The patch format's magic and the limits every applier of it enforces.

Constants only, shared by the framing modules (patchformat.py for versions 1 and 2,
compact.py for version 3); docs/patch-format.md, "Limits an applier enforces".
"""

MAGIC = b"BSIPATCH"
#: Largest output of one segment this applier accepts (resume/parallelism granularity;
#: output is streamed, so it does not cost memory).
MAX_SEGMENT_SIZE = 256 << 20
#: Largest buffered sections (control + runs + literals) and decompressed payload of
#: one segment this applier accepts: these are what apply memory depends on.
MAX_BUFFERED = 16 << 20
MAX_PAYLOAD = 32 << 20
#: Largest image a header may claim (old or new); more is refused before anything is
#: sized or allocated (a u64 field can claim 2^64 - 1 bytes).
MAX_IMAGE_SIZE = 1 << 48
