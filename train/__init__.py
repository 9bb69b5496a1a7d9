"""Offline training of the four-class classifier from AudioSet embedding tfrecords.

Modules: ``data`` (tfrecord reading, splits, balancing), ``models``
(architectures), ``fit`` (training runs), ``evaluate`` (metrics, plots),
``export`` (model bundles), ``experiments`` (the paper's grid). The command
line is ``audiocap-train`` (``train.__main__``); see ``docs/training.md``.
"""
