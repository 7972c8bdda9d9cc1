"""Training, configured by :mod:`rsnn_bfd.config`: batches, the step, model selection,
resuming, the run folder, torchrun, and the run (``RSNN_bfd_SpikingBased.py``,
``RSNN_bfd_RealValued.py``)."""
