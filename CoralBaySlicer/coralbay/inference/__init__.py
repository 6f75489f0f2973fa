"""Inference: sliding windows over the model grid, segmentation and classification pipelines."""
