"""Signed metadata: what is genuine, current and applicable.

``verify`` decides trust from bytes and ``now=`` (no I/O); ``manifest`` and
``catalog`` are the metadata documents; ``canonical`` and ``keys`` encode and sign;
``repository`` and ``publish`` lay out and build a repository on the vendor side.
"""
