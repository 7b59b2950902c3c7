"""Benchmarks behind ``ppl-mech bench NAME``; each module has ``main(argv) -> int``."""
