"""Column names shared by the sources, the stages and the run-folder writers."""

# Image rows flowing through Ray Data.
ID = "id"  # stable image id: "<set>/<relative path or key>"
SET = "set"  # "a" or "b"
URI = "uri"  # local path or s3:// URI of the encoded image
CAPTION = "caption"  # caption from the manifest ("" when absent)
IMAGE_BYTES = "image_bytes"
PIXELS = "pixels"  # uint8 (C, H, W), resized + cropped; normalised beside the model
ERROR = "error"  # "" when the row is fine, else "<reason>: <detail>"
EMBEDDING = "embedding"  # L2-normalised float32 vector
GENERATED_CAPTION = "generated_caption"
CONTENT_HASH = "content_hash"  # blake2b of the encoded image bytes (cache key with the model)
CACHED_EMBEDDING = "cached_embedding"  # float32 bytes of a cache hit, b"" for a miss
FROM_CACHE = "from_cache"  # bool: the embedding came from the cache

SET_A = "a"
SET_B = "b"
SETS = (SET_A, SET_B)

# Ranked table columns (ranked.json / ranked.parquet): one row per hypothesis and direction
# ("a": more true of A than of B; "b": the reverse), best first within each direction. Statistics
# are oriented to the row's direction; see visdiff.rank.significance. n_a_test/n_b_test: the
# images behind p_value, q_value, the AUROC interval and `significant` (rank.holdout).
RANKED_COLUMNS = (
    "rank",
    "direction",
    "hypothesis",
    "auroc",
    "auroc_test",
    "auroc_ci_low",
    "auroc_ci_high",
    "auroc_error_bound",
    "auroc_exact",
    "p_value",
    "q_value",
    "significant",
    "mean_a",
    "mean_b",
    "diff",
    "t_stat",
    "correct_delta",
    "n_a",
    "n_b",
    "n_a_test",
    "n_b_test",
)

# Files every describe run folder holds (metrics.json too when evaluation is on). status.json is
# written last: {"state": "complete", ...} or {"state": "failed", "error": ...}.
RUN_FILES = (
    "config.yaml",
    "hypotheses.jsonl",
    "ranked.json",
    "ranked.parquet",
    "stats.json",
    "evidence.parquet",
    "report.html",
    "status.json",
)

# Paired sets (propose.proposer=paired): the key an A image shares with its B image (a manifest's
# data.pair_column, or the file name for two folders).
PAIR = "pair"
