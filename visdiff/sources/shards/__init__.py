"""Web-scale inputs: WebDataset tar shards and Parquet shards, local or on S3.

With millions of images the driver must never list images, only shards: `resolve` turns a glob,
a brace pattern or a list into shard URIs on the driver, and the per-shard readers (`webdataset`,
`parquet`) run on Ray workers, streaming each shard so it is never fully in memory. `read` is
what the pipeline maps over a dataset of shard rows. No Ray in this package.

Every image becomes one row with the columns of `rows.ROW_COLUMNS`. Nothing a shard contains may
fail the run: a truncated tar, an unreadable object or a sample without an image becomes a row
with an `error` ("<reason>: <detail>"), so every loss is counted in the report instead of lost.
"""
