"""Adapters that plug the fused operators into other libraries' models.

``focal_loss_ext.integrations.torchvision``: ``fuse_focal_loss(model)`` for torchvision's
RetinaNet and FCOS. Each adapter imports its library only when it is used.
"""
