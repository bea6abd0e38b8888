# What every pola_mm config shares at run time: the package is imported (so that the bare
# backbone names and the timm names are registered too), and the runner is pola_mm's
# PolaRunner (weights-only checkpoint loading, atomic checkpoints, exact resume, a stop
# at non-finite losses). With these, MMDetection's, MMSegmentation's and MMPretrain's own
# tools/train.py and tools/test.py (and --resume) run a config that inherits a pola_mm one.
custom_imports = dict(imports=['pola_mm'], allow_failed_imports=False)
runner_type = 'pola_mm.PolaRunner'
