"""Backbones timm lacks, registered in timm's model registry on import (`timm.create_model("van_b0")`)."""

from vision.backbones.evit import EViT, apply_evit
from vision.backbones.van import VAN

__all__ = ["EViT", "VAN", "apply_evit"]
