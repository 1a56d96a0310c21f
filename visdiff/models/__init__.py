"""Model factories: one function per model family turns a typed config into a ready, eval-mode
bundle (weights + preprocessing + tokenizer), plus the offline availability check run before any
of them loads."""
