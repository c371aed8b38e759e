"""The DINOv3 losses against values computed by hand on small inputs."""

from __future__ import annotations

import math

import pytest
import torch

from geodino.training.dino_head import DINOHead
from geodino.training.losses import DINOLoss, GramLoss, KoLeoLoss, KoLeoLossDistributed, iBOTPatchLoss
from geodino.training.losses.dino_clstoken import _sinkhorn_log_domain, sinkhorn_knopp


def _log_softmax(row: list[float], temp: float) -> list[float]:
    z = [v / temp for v in row]
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def _naive_sinkhorn(logits: list[list[float]], temp: float, iters: int) -> list[list[float]]:
    """Sinkhorn-Knopp with explicit loops on a (N, K) list: K prototypes share N samples equally."""
    N, K = len(logits), len(logits[0])
    Q = [[math.exp(logits[n][k] / temp) for n in range(N)] for k in range(K)]  # (K, N)
    total = sum(map(sum, Q))
    Q = [[v / total for v in row] for row in Q]
    for _ in range(iters):
        Q = [[v / sum(row) / K for v in row] for row in Q]
        cols = [sum(Q[k][n] for k in range(K)) for n in range(N)]
        Q = [[Q[k][n] / cols[n] / N for n in range(N)] for k in range(K)]
    return [[Q[k][n] * N for k in range(K)] for n in range(N)]


# --------------------------------------------------------------------------------------------- Sinkhorn
def test_sinkhorn_matches_loops_and_has_the_stated_marginals() -> None:
    logits = torch.randn(6, 4) * 3
    out = sinkhorn_knopp(logits, 0.5, n_iterations=3)
    ref = torch.tensor(_naive_sinkhorn(logits.tolist(), 0.5, 3))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # After the last (sample) step every row sums to 1 exactly.
    torch.testing.assert_close(out.sum(dim=1), torch.ones(6))
    # With enough iterations each prototype also holds N/K of the mass.
    converged = sinkhorn_knopp(logits, 0.5, n_iterations=200)
    torch.testing.assert_close(converged.sum(dim=0), torch.full((4,), 6 / 4), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(converged.sum(dim=1), torch.ones(6))


@pytest.mark.parametrize("iters", [0, 1, 3])
def test_sinkhorn_fast_path_equals_the_log_domain_iterates(iters: int) -> None:
    logits = torch.randn(9, 11) * 2
    fast = sinkhorn_knopp(logits, 0.1, n_iterations=iters)
    torch.testing.assert_close(fast, _sinkhorn_log_domain(logits, 0.1, 9.0, iters), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast, torch.tensor(_naive_sinkhorn(logits.tolist(), 0.1, iters)), rtol=1e-5, atol=1e-6)


def test_sinkhorn_of_dino_and_ibot_agree_and_survive_large_logits() -> None:
    logits = torch.randn(5, 7) * 50  # exp(50 / 0.04) overflows, and whole rows underflow: the log-domain path
    dino = DINOLoss(7).sinkhorn_knopp_teacher(logits, 0.04)
    ibot = iBOTPatchLoss(7).sinkhorn_knopp_teacher(logits, 0.04, torch.tensor(5))
    assert torch.isfinite(dino).all()
    torch.testing.assert_close(dino, ibot)
    torch.testing.assert_close(dino.sum(dim=1), torch.ones(5))
    torch.testing.assert_close(dino, _sinkhorn_log_domain(logits, 0.04, 5.0, 3))
    # Large but not extreme: the per-prototype shift alone keeps exp() finite (the reference's unshifted exp
    # overflows here).
    big = torch.randn(6, 5) * 3 + 10
    assert torch.isinf(torch.exp(big / 0.04)).any()
    torch.testing.assert_close(sinkhorn_knopp(big, 0.04), _sinkhorn_log_domain(big, 0.04, 6.0, 3))


def test_sinkhorn_and_ibot_without_any_masked_patch() -> None:
    empty = iBOTPatchLoss(7).sinkhorn_knopp_teacher(torch.randn(0, 7), 0.05, torch.tensor(0))
    assert empty.shape == (0, 7)
    loss = iBOTPatchLoss(7).forward_masked(torch.randn(0, 7), empty, torch.zeros(3, 4, dtype=torch.bool))
    assert loss.item() == 0.0


# ------------------------------------------------------------------------------------------------- DINO
def _dino_by_hand(student: torch.Tensor, teacher: torch.Tensor, temp: float, ignore_diagonal: bool) -> float:
    S, B, _ = student.shape
    T = teacher.shape[0]
    total, terms = 0.0, 0
    for s in range(S):
        for t in range(T):
            if ignore_diagonal and s == t:
                continue
            for b in range(B):
                log_p = _log_softmax(student[s, b].tolist(), temp)
                total -= sum(q * lp for q, lp in zip(teacher[t, b].tolist(), log_p, strict=True))
                terms += 1
    return total / terms


@pytest.mark.parametrize("ignore_diagonal", [False, True])
def test_dino_loss_by_hand(ignore_diagonal: bool) -> None:
    student = torch.randn(2, 3, 5)
    teacher = torch.softmax(torch.randn(2, 3, 5), dim=-1)
    loss = DINOLoss(5)(student, teacher, ignore_diagonal=ignore_diagonal)
    assert loss.item() == pytest.approx(_dino_by_hand(student, teacher, 0.1, ignore_diagonal), rel=1e-5)


def test_dino_crosswise_global_term_uses_only_the_other_crop() -> None:
    # Two global crops: the crosswise term is the mean of (student A, teacher B) and (student B, teacher A).
    student = torch.randn(2, 4, 6)
    teacher = torch.softmax(torch.randn(2, 4, 6), dim=-1)
    loss = DINOLoss(6)
    cross = loss(student, teacher, ignore_diagonal=True)
    ab = loss(student[:1], teacher[1:])
    ba = loss(student[1:], teacher[:1])
    torch.testing.assert_close(cross, (ab + ba) / 2)
    # Local crops (S=3) against global teachers (T=2): every pair counts.
    local = torch.randn(3, 4, 6)
    assert loss(local, teacher).item() == pytest.approx(_dino_by_hand(local, teacher, 0.1, False), rel=1e-5)


def test_dino_loss_rejects_mismatched_shapes_and_a_lone_pair() -> None:
    with pytest.raises(ValueError, match="same B and K"):
        DINOLoss(5)(torch.randn(2, 3, 5), torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="no pair"):
        DINOLoss(5)(torch.randn(1, 3, 5), torch.randn(1, 3, 5), ignore_diagonal=True)


def test_softmax_center_teacher_and_center_update_by_hand() -> None:
    loss = DINOLoss(3, center_momentum=0.9)
    t = torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, 0.0]])
    probs = loss.softmax_center_teacher(t, 0.5)
    torch.testing.assert_close(probs, torch.softmax(t / 0.5, dim=-1))  # centre was 0
    torch.testing.assert_close(loss.center, 0.1 * torch.tensor([[2.0, 1.0, 1.5]]))
    probs2 = loss.softmax_center_teacher(t, 0.5, update_centers=False)
    torch.testing.assert_close(probs2, torch.softmax((t - loss.center) / 0.5, dim=-1))
    torch.testing.assert_close(loss.center, 0.1 * torch.tensor([[2.0, 1.0, 1.5]]))


# ------------------------------------------------------------------------------------------------- iBOT
def test_ibot_forward_masked_by_hand() -> None:
    masks = torch.tensor([[True, False, True, True], [False, False, False, False], [False, True, False, False]])
    M = int(masks.sum())
    s = torch.randn(M, 5)
    t = torch.softmax(torch.randn(M, 5), dim=-1)
    loss = iBOTPatchLoss(5).forward_masked(s, t, masks)
    # Image 0 has 3 masked patches (rows 0-2), image 1 none, image 2 one (row 3); mean over the 3 images.
    ce = [-sum(q * lp for q, lp in zip(t[m].tolist(), _log_softmax(s[m].tolist(), 0.1), strict=True)) for m in range(M)]
    expected = ((ce[0] + ce[1] + ce[2]) / 3 + 0.0 + ce[3] / 1) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # Explicit weights and a padded tail give the same value.
    w = torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0, 123.0])
    padded = iBOTPatchLoss(5).forward_masked(
        torch.cat([s, torch.randn(1, 5)]), torch.cat([t, t[:1]]), masks, n_masked_patches=M, masks_weight=w
    )
    assert padded.item() == pytest.approx(expected, rel=1e-5)


def test_ibot_full_grid_forward_equals_forward_masked() -> None:
    masks = torch.rand(3, 6) < 0.5
    masks[0, 0] = True
    s = torch.randn(3, 6, 4)
    t = torch.softmax(torch.randn(3, 6, 4), dim=-1)
    loss = iBOTPatchLoss(4)
    torch.testing.assert_close(loss(s, t, masks), loss.forward_masked(s[masks], t[masks], masks))


def test_ibot_mismatched_weights_raise() -> None:
    masks = torch.tensor([[True, True]])
    with pytest.raises(ValueError, match="mask weights"):
        iBOTPatchLoss(3).forward_masked(torch.randn(2, 3), torch.rand(2, 3), masks, masks_weight=torch.ones(3))


# ------------------------------------------------------------------------------------------------ KoLeo
def test_koleo_on_known_points() -> None:
    # Unit circle at 0, 60 and 180 degrees: nearest distances 1, 1 and sqrt(3) (chords 2 sin(angle / 2)).
    angles = torch.tensor([0.0, 60.0, 180.0]) * math.pi / 180
    pts = torch.stack([angles.cos(), angles.sin()], dim=1)
    expected = -(math.log(1 + 1e-8) * 2 + math.log(math.sqrt(3) + 1e-8)) / 3
    assert KoLeoLoss()(pts).item() == pytest.approx(expected, abs=1e-6)
    # Inputs are L2-normalised first: scaling a point changes nothing.
    scaled = pts * torch.tensor([[5.0], [0.5], [2.0]])
    assert KoLeoLoss()(scaled).item() == pytest.approx(expected, abs=1e-6)
    assert KoLeoLossDistributed()(scaled).item() == pytest.approx(expected, abs=1e-6)


def test_koleo_gradient_spreads_the_closest_pair() -> None:
    pts = torch.tensor([[1.0, 0.0], [1.0, 0.05], [-1.0, 0.0]], requires_grad=True)
    KoLeoLoss()(pts).backward()
    # Gradient descent moves point 1 away from point 0 (up in y), i.e. the gradient's y is negative.
    assert pts.grad[1, 1] < 0
    with pytest.raises(ValueError, match="B >= 2"):
        KoLeoLoss()(torch.randn(1, 4))


# ------------------------------------------------------------------------------------------------- Gram
def _feats(*rows: tuple[float, float]) -> torch.Tensor:
    """One image of N patches of 2-D features: (1, N, 2)."""
    return torch.tensor([list(r) for r in rows]).unsqueeze(0)


def test_gram_loss_options_on_known_matrices() -> None:
    # Student Gram off-diagonal -0.6, teacher +0.8 (unit vectors, so the diagonals agree).
    student = _feats((1.0, 0.0), (-0.6, 0.8))
    teacher_pos = _feats((1.0, 0.0), (0.8, 0.6))
    plain = GramLoss(remove_neg=False)
    assert plain(student, teacher_pos).item() == pytest.approx(2 * 1.4**2 / 4)
    assert GramLoss(remove_neg=True)(student, teacher_pos).item() == pytest.approx(2 * 0.8**2 / 4)
    only_t = GramLoss(remove_neg=False, remove_only_teacher_neg=True)
    # The teacher is positive there, so nothing is clipped.
    assert only_t(student, teacher_pos).item() == pytest.approx(2 * 1.4**2 / 4)
    # Teacher -0.8 and student -0.6: both clipped to 0 (the reference's bug would leave the student at -0.6).
    teacher_neg = _feats((1.0, 0.0), (-0.8, 0.6))
    assert only_t(student, teacher_neg).item() == pytest.approx(0.0, abs=1e-12)
    # Teacher -0.8 and student +0.6: the teacher clips to 0, the student keeps 0.6.
    student_pos = _feats((1.0, 0.0), (0.6, 0.8))
    assert only_t(student_pos, teacher_neg).item() == pytest.approx(2 * 0.6**2 / 4)
    assert plain(student_pos, teacher_neg).item() == pytest.approx(2 * 1.4**2 / 4)


def test_gram_loss_normalisation_and_batch_level() -> None:
    student = _feats((2.0, 0.0), (0.0, 2.0))
    teacher = _feats((1.0, 0.0), (0.0, 1.0))
    assert GramLoss()(student, teacher).item() == pytest.approx(0.0)
    # Without normalisation the student's diagonal is 4, not 1: (3^2 + 3^2) / 4.
    assert GramLoss(apply_norm=False)(student, teacher).item() == pytest.approx(18 / 4)
    # Two images of one patch: per image the Gram matrices are [[1]] (loss 0); over the flattened batch the
    # teacher's two patches are parallel (cross term 1) and the student's orthogonal (0): mean 2 / 4.
    s2 = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    t2 = torch.tensor([[[1.0, 0.0]], [[3.0, 0.0]]])
    assert GramLoss()(s2, t2, img_level=True).item() == pytest.approx(0.0)
    assert GramLoss()(s2, t2, img_level=False).item() == pytest.approx(0.5)
    assert GramLoss(img_level=False)(s2, t2, img_level=None).item() == pytest.approx(0.5)


def test_gram_loss_gradient_reaches_only_the_student_and_bad_input_raises() -> None:
    s = torch.randn(2, 5, 8, requires_grad=True)
    t = torch.randn(2, 5, 8, requires_grad=True)
    GramLoss(remove_neg=False)(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    with pytest.raises(ValueError, match="same"):
        GramLoss()(torch.randn(2, 5, 8), torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="exclusive"):
        GramLoss(remove_neg=True, remove_only_teacher_neg=True)


# ------------------------------------------------------------------------------------------------- head
def test_dino_head_shape_and_structure() -> None:
    head = DINOHead(16, out_dim=10, hidden_dim=12, bottleneck_dim=6, nlayers=3)
    x = torch.randn(4, 16)
    out = head(x)
    assert out.shape == (4, 10)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 12), (12, 12), (12, 6)]
    assert sum(isinstance(m, torch.nn.GELU) for m in head.mlp) == 2
    assert head.last_layer.bias is None
    assert not list(head.last_layer.parametrizations) if hasattr(head.last_layer, "parametrizations") else True
    bottleneck = torch.nn.functional.normalize(head.mlp(x), dim=-1)
    torch.testing.assert_close(out, bottleneck @ head.last_layer.weight.t())
    assert DINOHead(16, 10, 12, 6, nlayers=1)(x).shape == (4, 10)


def test_gram_loss_token_mask_selects_tokens() -> None:
    s, t = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    keep = torch.tensor([[True, True, False, True]] * 2)
    loss = GramLoss(remove_neg=False)
    sub = loss(s[:, [0, 1, 3]], t[:, [0, 1, 3]])
    torch.testing.assert_close(loss(s, t, token_mask=keep), sub)
    # Over the flattened batch: the Gram matrix of the selected tokens of every image.
    uneven = torch.tensor([[True, False, False, False], [False, True, True, False]])
    flat = loss(s[uneven].unsqueeze(0), t[uneven].unsqueeze(0))
    torch.testing.assert_close(loss(s, t, img_level=False, token_mask=uneven), flat)
    # Nothing selected: 0, not NaN.
    none = loss(s, t, token_mask=torch.zeros(2, 4, dtype=torch.bool))
    assert none.item() == 0.0
