"""Geometry shared by every task: homographies (sampling, warping points and images, valid
masks), keypoint selection (NMS, top-k) and descriptor matching, and camera models (unprojection
of depth to points and back). It imports nothing from datasets, models or scripts.
"""
