"""smp decoders on the tiny backbone: each trains one optimiser step and maps at the input resolution."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import make_tiny_backbone

from geodino.heads.base import HeadError, head_from_config
from geodino.heads.model import DenseModel
from geodino.heads.smp import SmpHead, smp_head

OPTIONS = {
    "upernet": {"decoder_channels": 32},
    "fpn": {"pyramid_channels": 32, "segmentation_channels": 32},
    "unet": {"decoder_channels": [32, 16, 16, 8, 8]},
}


@pytest.mark.parametrize("decoder", ["upernet", "fpn", "unet"])
def test_decoder_trains_a_step_at_input_resolution(decoder: str) -> None:
    torch.manual_seed(0)
    backbone = make_tiny_backbone()
    head = smp_head(backbone, decoder, out_channels=3, decoder_options=OPTIONS[decoder])
    assert head.layers == [0, 1, 2, 3]
    model = DenseModel(backbone, head).train()
    x = torch.randn(2, 3, 64, 96)
    target = torch.randint(0, 3, (2, 64, 96))
    optimiser = torch.optim.AdamW(model.head.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.head.state_dict().items()}
    backbone_before = {k: v.clone() for k, v in backbone.state_dict().items()}
    logits = model(x)
    assert logits.shape == (2, 3, 64, 96)
    loss = torch.nn.functional.cross_entropy(logits, target)
    loss.backward()
    optimiser.step()
    changed = [k for k, v in model.head.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith("pyramid.") for k in changed) and any(k.startswith("decoder.") for k in changed)
    assert all(torch.equal(v, backbone_before[k]) for k, v in backbone.state_dict().items())  # frozen backbone
    model.eval()
    with torch.no_grad():
        odd = model(torch.randn(1, 3, 50, 70))  # padded to 64 x 96, cropped back
    assert odd.shape == (1, 3, 50, 70)
    rebuilt = head_from_config(head.describe()["head_class"], head.config())
    rebuilt.load_state_dict(head.state_dict())
    assert rebuilt.describe()["layers"] == [0, 1, 2, 3] and head.describe()["input_multiple"] == 32


def test_bad_smp_configurations() -> None:
    with pytest.raises(HeadError, match="unknown smp decoder 'segformer'"):
        SmpHead(64, [0, 1, 2, 3], decoder="segformer")
    with pytest.raises(HeadError, match="4 layers"):
        SmpHead(64, [3])
    head = SmpHead(64, [0, 1, 2, 3], decoder="upernet", decoder_options={"decoder_channels": 16}).eval()
    feats = [(torch.randn(1, 64, 3, 3), torch.randn(1, 64)) for _ in range(4)]
    with pytest.raises(HeadError, match="multiples of 32, got 48x48"):
        head(feats, (48, 48))


def test_importing_heads_does_not_import_smp_or_torch() -> None:
    code = "import sys, geodino.heads; print('segmentation_models_pytorch' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
