"""The CoralBay network: eva-compatible Swin-UNETR encoder, segmentation decoder, linear head."""

from coralbay.model.build import ArchitectureSpec, build_network, count_parameters, parameters_on_meta

__all__ = ["ArchitectureSpec", "build_network", "count_parameters", "parameters_on_meta"]
