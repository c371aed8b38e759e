"""geodino.training: the DINOv3 self-supervised training recipe (Gram anchoring)."""
