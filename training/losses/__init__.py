"""The DINOv3 training losses, one per module, with the release's class names and arguments."""

from geodino.training.losses.dino_clstoken import DINOLoss
from geodino.training.losses.gram import GramLoss
from geodino.training.losses.ibot_patch import iBOTPatchLoss
from geodino.training.losses.koleo import KoLeoLoss, KoLeoLossDistributed

__all__ = ["DINOLoss", "GramLoss", "KoLeoLoss", "KoLeoLossDistributed", "iBOTPatchLoss"]
