"""Research studies: the scripts and analysis behind docs/pinf.md (the p = inf
decomposition of the trivial bound: ``pinf``, ``pinf_study``) and docs/smooth.md (a sound
phase bound for sinusoidal networks: ``smooth_reference``).  They use lipbench, lipbench
does not use them; they are not installed with it (run them from the repository:
``python studies/pinf_study.py``)."""
