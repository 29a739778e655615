"""The training engine shared by every ``train_*.py``: the :class:`engine.trainer.Trainer`, the
command-line plumbing (``engine.cli``), devices and precision, DDP process groups, batch collation
and the resumable sampler. It knows no task: models, losses and data are handed to it.
"""
