"""Vision family: image encoders (timm / HF / own backbones), pooling heads, image datasets, FocalLens,
explanations.

Importing the package registers this project's backbones (VAN, EViT, MOAT, RMT, OverLoCK, DiNAT, VSA,
DHVT, SpaRTAN, AttNet, NiNformer) in timm's model registry.
"""

import vision.backbones  # noqa: F401  (registers them with timm)
