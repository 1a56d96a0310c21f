"""Input side of visdiff: list the two image sets (manifest or folders), read bytes from local
disk or object stores, and decode images robustly into RGB. No models and no Ray here: the
pipeline applies Ray Data to these plain functions."""
