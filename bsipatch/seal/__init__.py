"""Seal layer: dm-verity compatible hash trees over images.

``tree`` builds and verifies seals and reads images block by verified block;
``leafcache`` keeps verified leaf digests so unchanged blocks are not re-hashed.
No trust decisions here: the root hash to check against comes from signed metadata.
"""
