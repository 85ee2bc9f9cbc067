"""Backbones timm lacks, registered in timm's model registry on import (`timm.create_model("van_b0")`)."""

from vision.backbones.attnet import AttNet
from vision.backbones.dhvt import DHVT
from vision.backbones.dinat import DiNAT
from vision.backbones.evit import EViT, apply_evit
from vision.backbones.moat import MOAT
from vision.backbones.ninformer import NiNformer
from vision.backbones.overlock import OverLoCK
from vision.backbones.rmt import RMT
from vision.backbones.spartan import SpaRTAN
from vision.backbones.van import VAN
from vision.backbones.vsa import SwinVSA

__all__ = ["DHVT", "MOAT", "RMT", "VAN", "AttNet", "DiNAT", "EViT", "NiNformer", "OverLoCK", "SpaRTAN", "SwinVSA",
           "apply_evit"]
