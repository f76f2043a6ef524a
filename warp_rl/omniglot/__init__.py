"""Omniglot few-shot classification on the warp core (WarpGrad's supervised experiment).

Modules: :mod:`.data` (readers, checksums, download, 28x28 cache), :mod:`.tasks` (the alphabet
split and batched task sampling with affine distortion), :mod:`.models` (the 4-block conv net and
its warped version), :mod:`.meta_learners` (warp_leap, warp, leap, reptile, fomaml, maml, ft, no),
:mod:`.grouped` (adapting a meta-batch's tasks together), :mod:`.oneshot` (the official 20
one-shot runs), :mod:`.bench` (seconds per meta-step).
"""
