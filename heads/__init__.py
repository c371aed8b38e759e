"""geodino.heads: dense heads (linear, DPT, smp) on the DINOv3 backbone, tasks and metrics."""
