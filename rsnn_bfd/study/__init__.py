"""Comparisons: the conventional baselines and stratified k-fold cross-validation
(``baselines.py``, ``crossval.py``)."""
