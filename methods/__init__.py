"""The paper's method (arXiv 2603.28113): networks that the trivial bound verifies."""
