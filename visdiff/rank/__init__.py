"""Ranking statistics: how well each hypothesis separates image set A from set B."""
