"""Storage: one layer over pyarrow.fs for sources, cache and run folders."""
