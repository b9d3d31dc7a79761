"""Pruning, BatchNorm folding and INT8 fake quantisation."""

import pytest
import torch
from torch import nn

from edge_calib.models.fold import fold_batchnorm
from edge_calib.compress.prune import (
    apply_masks,
    compute_masks,
    is_two_four,
    magnitude_mask,
    parse_prune,
    two_four_mask,
)
from edge_calib.core.errors import EdgeCalibError
from edge_calib.models.int8 import QuantConv2d, estimate_scales, quantize_layers
from edge_calib.models.classifiers import build_classifier


def test_two_four_keeps_the_two_largest_of_each_group():
    w = torch.tensor([[[[1.0]], [[-4.0]], [[3.0]], [[0.5]], [[2.0]], [[-0.1]], [[0.2]], [[-5.0]]]])
    mask = two_four_mask(w)  # (1, 8, 1, 1): groups (1,-4,3,.5) and (2,-.1,.2,-5)
    assert mask.flatten().tolist() == [False, True, True, False, True, False, False, True]
    assert two_four_mask(torch.randn(4, 3, 5, 5)) is None  # RGB first conv stays dense


def test_two_four_on_a_real_network():
    torch.manual_seed(0)
    model = build_classifier("dtn")
    apply_masks(model, compute_masks(model, "2:4", 0.5))
    assert not is_two_four(model.conv1.weight)  # 3 input channels: skipped
    for layer in (model.conv2, model.conv3, model.fc1, model.fc2):
        assert is_two_four(layer.weight)
        assert (layer.weight == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)


def test_unstructured_sparsity_and_parsing():
    w = torch.randn(64, 64)
    assert (~magnitude_mask(w, 0.7)).float().mean().item() == pytest.approx(0.7, abs=1e-3)
    assert parse_prune("2:4") == ("2:4", 0.5)
    assert parse_prune("30%") == ("unstructured", 0.3)
    assert parse_prune(None) is None
    with pytest.raises(EdgeCalibError, match="--prune"):
        parse_prune("half")


def test_batchnorm_folding_is_inference_equivalent():
    torch.manual_seed(1)
    model = build_classifier("dtn")
    model.train()
    for _ in range(3):  # give BN non-trivial running statistics
        model(torch.randn(32, 3, 32, 32))
    model.eval()
    for bn in (model.bn1, model.bn4):
        nn.init.uniform_(bn.weight, 0.5, 2.0)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d))
                   for m in folded.modules())
    x = torch.randn(8, 3, 32, 32)
    assert torch.allclose(folded(x), model(x), atol=1e-4)


def test_fake_quant_scales_and_straight_through_gradient():
    torch.manual_seed(2)
    conv = QuantConv2d(nn.Conv2d(4, 6, 3))
    x = torch.randn(16, 4, 8, 8)
    estimate_scales(nn.Sequential(conv), [x], method="max")
    amax = conv.weight.detach().abs().reshape(6, -1).amax(1)
    assert torch.allclose(conv.weight_scale, amax / 127)
    assert conv.input_scale.item() == pytest.approx(x.abs().max().item() / 127)
    q = conv.quant_weight() / conv.weight_scale.reshape(-1, 1, 1, 1)
    assert torch.allclose(q, q.round(), atol=1e-4)  # weights on the int8 grid
    conv.input_scale.fill_(0.01)  # range +-1.28: values beyond saturate
    xin = torch.tensor([[-2.0, -0.5, 0.3, 1.5]]).reshape(1, 4, 1, 1).repeat(1, 1, 3, 3)
    xin.requires_grad_(True)
    conv(xin).sum().backward()
    saturated = xin.grad.abs().sum(dim=(2, 3)).flatten() == 0
    assert saturated.tolist() == [True, False, False, True]


def test_quantize_layers_replaces_conv_and_linear():
    folded = fold_batchnorm(build_classifier("lenet").eval())
    q = quantize_layers(folded)
    kinds = [type(m).__name__ for m in q.children()]
    assert kinds.count("QuantConv2d") == 2 and kinds.count("QuantLinear") == 2
