"""DINOv3 vision transformers, checkpoint formats and pretrained-weights metadata."""
