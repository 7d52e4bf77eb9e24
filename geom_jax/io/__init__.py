"""Generic file I/O: atomic writes, content hashes and provenance (no geometry here)."""
