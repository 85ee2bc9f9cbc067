"""Vision family: image encoders (timm / HF / own backbones), pooling heads, image datasets, FocalLens.

Importing the package registers this project's backbones (VAN, EViT) in timm's model registry.
"""

import vision.backbones  # noqa: F401  (registers van_* and evit_* with timm)
