"""The names vector extraction accepts, kept apart from :mod:`engine.extract` (which needs torch).

Experiment files and the conditional method's settings are validated against these
without loading torch.
"""

from __future__ import annotations

EXTRACTION_METHODS = ("mean_diff", "pca", "single_pair")
READ_POSITIONS = ("last", "mean")
