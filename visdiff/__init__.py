"""visdiff: describe in plain language how two sets of images differ (VisDiff on Ray)."""

__version__ = "0.1.0"
