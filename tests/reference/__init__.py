"""The tests' independent references: ``oracle`` (float64 NumPy transcriptions of every
measure's formula, DADApy 0.3.4's conventions where it has one) and the generators of
``tests/fixtures`` (``python -m tests.reference.NAME`` from the repository root)."""
