"""Read just enough of an ELF file to find where its references live.

Parses the ELF header, program headers (loadable segments) and section headers of a
64-bit little-endian x86-64 or AArch64 ELF file held in a buffer, checking every
offset and count against the buffer. It does not follow dynamic linking, read
symbols or decode instructions (csrc/bsi_exe.c does that), and it never raises on
a malformed file: :func:`parse` returns None for anything it does not understand.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from bsipatch._buffers import Buffer

EM_X86_64 = 62
EM_AARCH64 = 183
MACHINES = (EM_X86_64, EM_AARCH64)
ET_EXEC = 2
ET_DYN = 3
PT_LOAD = 1
SHT_SYMTAB = 2
SHT_RELA = 4
SHT_NOBITS = 8
SHT_DYNSYM = 11
SHT_INIT_ARRAY = 14
SHT_FINI_ARRAY = 15
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
#: Files with more program or section headers than this are not treated as ELF.
MAX_HEADERS = 4096
#: Bytes a file may have after the end of its last section or header table. Linkers put
#: the section header table last; more than this means the ELF file is only the start of
#: something else (a concatenation, an archive, an image), which is not diffed as ELF.
MAX_TRAILING = 64


class Load(NamedTuple):
    """A loadable segment: file bytes [off, off+filesz) at virtual address va."""

    off: int
    filesz: int
    va: int
    memsz: int


class Section(NamedTuple):
    """One section header (name resolved)."""

    name: str
    type: int
    flags: int
    addr: int
    off: int
    size: int
    entsize: int


class Elf(NamedTuple):
    """What the reference transform needs to know about an ELF file."""

    machine: int
    type: int
    loads: tuple[Load, ...]
    sections: tuple[Section, ...]

    def section(self, name: str) -> Section | None:
        """The first section called ``name``, or None."""
        return next((s for s in self.sections if s.name == name), None)


def _name(strtab: bytes, off: int) -> str:
    if off >= len(strtab):
        return ""
    end = strtab.find(b"\0", off)
    return strtab[off : end if end >= 0 else len(strtab)].decode("latin-1")


def parse(buf: Buffer) -> Elf | None:
    """The :class:`Elf` of ``buf``; None unless a well-formed 64-bit LE x86-64/AArch64 ELF."""
    size = len(buf)
    mv = memoryview(buf)
    if size < 64 or bytes(mv[:4]) != b"\x7fELF" or mv[4] != 2 or mv[5] != 1:
        return None
    (
        etype,
        machine,
        _v,
        _entry,
        phoff,
        shoff,
        _fl,
        _eh,
        phentsize,
        phnum,
        shentsize,
        shnum,
        shstrndx,
    ) = struct.unpack_from("<HHIQQQIHHHHHH", mv, 16)
    if machine not in MACHINES or etype not in (ET_EXEC, ET_DYN):
        return None
    if phentsize != 56 or shentsize != 64 or phnum > MAX_HEADERS or shnum > MAX_HEADERS:
        return None
    if phoff + 56 * phnum > size or shoff + 64 * shnum > size or shnum == 0 or shstrndx >= shnum:
        return None
    loads = []
    for i in range(phnum):
        ptype, _f, off, va, _pa, filesz, memsz, _al = struct.unpack_from(
            "<IIQQQQQQ", mv, phoff + 56 * i
        )
        if ptype == PT_LOAD:
            if off + filesz > size or memsz < filesz or va + memsz >= 1 << 63:
                return None
            loads.append(Load(off, filesz, va, memsz))
    raw = [struct.unpack_from("<IIQQQQIIQQ", mv, shoff + 64 * i) for i in range(shnum)]
    s_off, s_size = raw[shstrndx][4], raw[shstrndx][5]
    if s_off + s_size > size:
        return None
    strtab = bytes(mv[s_off : s_off + s_size])
    sections = []
    for name, stype, flags, addr, off, ssize, _link, _info, _align, entsize in raw:
        if stype != SHT_NOBITS and stype != 0 and off + ssize > size:
            return None
        if addr + ssize >= 1 << 63:
            return None
        sections.append(Section(_name(strtab, name), stype, flags, addr, off, ssize, entsize))
    if not loads:
        return None
    end = max(
        shoff + 64 * shnum,
        phoff + 56 * phnum,
        *(s.off + s.size for s in sections if s.type not in (SHT_NOBITS, 0)),
        *(ld.off + ld.filesz for ld in loads),
    )
    if size - end > MAX_TRAILING:
        return None
    return Elf(machine, etype, tuple(loads), tuple(sections))
