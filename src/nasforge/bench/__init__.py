"""Benchmarks that reproduce published numbers (run by `nasforge bench ...` and `benchmarks/`)."""
