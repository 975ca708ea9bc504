"""The names vector extraction accepts, kept apart from :mod:`engine.extract` (which needs torch).

Experiment files and the conditional method's settings are validated against these
without loading torch.
"""

from __future__ import annotations

EXTRACTION_METHODS = ("mean_diff", "pca", "single_pair")
# Where a pair's activations are read: the last token, the mean over every token, or the
# mean over the assistant's answer tokens (on raw text: the answer's own tokens).
READ_POSITIONS = ("last", "mean", "answer_mean")
# Prompts have no answer: a conditional gate reads a prompt at its last token or its mean.
PROMPT_READ_POSITIONS = ("last", "mean")
# auto: pairs go through the chat template when the experiment's prompts do; off: raw text.
TEMPLATE_MODES = ("auto", "off")
