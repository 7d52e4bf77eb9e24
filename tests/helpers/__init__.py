"""What the tests share: tolerances (the stated tolerance of every field and the rank rule),
pinned outputs (the goldens and what the ISA test recomputes), the tiny model, run and
subprocess set-up, Hugging Face checkpoints for parity tests."""
