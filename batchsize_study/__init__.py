"""The wiring above both sides: the command line and the Python API.

The one place that imports both :mod:`study` (the Optuna side, no torch) and
:mod:`objectives` (the PyTorch side), and hands the PyTorch backend
(``objectives.backend.TorchBackend``) to the study's orchestration. :mod:`~batchsize_study.commands`
holds the console command ``batchsize-study`` and the scripts' bodies;
:mod:`~batchsize_study.api` studies a ``Task`` object from Python (``run_study``) and costs it
first (``plan_study``). Worker processes start from :mod:`study.worker_process`, which is
handed the backend by its import name and so needs neither this package nor torch until it
builds the backend.
"""
