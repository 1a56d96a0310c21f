"""Content-addressed cache of per-image model outputs (CLIP embeddings, captions).

Entries are keyed by (model identity, hash of the encoded image bytes) so that any run over the
same images with the same model reuses earlier work, whatever the data set or run it came from.
Storage is append-only Parquet under a local folder or an object-store prefix: many Ray actors
on many nodes share it without a database or locks.
"""
