"""Evaluation of ranked hypotheses against a known ground-truth difference (LLM as judge)."""
