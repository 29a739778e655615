"""Evaluation protocols, one module or sub-package each: Synthetic Shapes detection
(``evaluators.synthetic_shapes``) and HPatches (``evaluators.hpatches``). ``evaluation.py`` is
the one command over them.
"""
