"""Evaluation of ranked hypotheses against a given ground truth (Acc@k): the paper's LLM judge
(`evaluator.py`, rubric in `judge.py`) or an offline sentence-embedding score (`embedding.py`)."""
