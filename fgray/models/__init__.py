"""Networks built from timm (no hand-written ResNet/ViT) plus the small heads methods share."""
from fgray.models.backbone import Backbone, build_backbone
from fgray.models.heads import ProjectionHead

__all__ = ["Backbone", "ProjectionHead", "build_backbone"]
