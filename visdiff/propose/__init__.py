"""Proposer text side: prompts for the proposer LLM, parsing of its answers, per-round sampling."""
