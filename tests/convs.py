"""Shared by the convolution tests of test_model.py and test_runtime.py: the textbook convolution and tolerances."""

import torch
import torch.nn.functional as F

from gcnn.model import CausalConv

# Tolerances. fp32: 1e-5 absolute (summation order only). bf16 (the textbook side is computed in fp32 from the same
# bf16-rounded input): outputs within 1% of the largest output magnitude -- weights rounded to bf16 (8 significant bits,
# relative error up to 2^-9) before fp32 accumulation, the result rounded once more; gradients within 2% of the largest
# gradient magnitude -- the incoming gradient is rounded to bf16 as well.
def textbook_conv_and_grads(conv, x, r):
    """F.conv1d over the left-padded input with the weight norm written out, in fp32; the output and the gradients of
    (output * r).sum() with respect to x and to each parameter (weight_v, weight_g, bias or weight, bias)."""
    params = [p.detach().float().clone().requires_grad_() for p in conv.parameters()]
    x = x.detach().float().clone().requires_grad_()
    if conv.weight_norm:
        v, g, bias = params
        weight = v * (g / v.flatten(1).norm(dim=1)).view(-1, 1, 1)
    else:
        weight, bias = params
    k = conv.kernel
    y = F.conv1d(F.pad(x.transpose(1, 2), (k - 1, 0)), weight, bias, groups=conv.groups).transpose(1, 2)
    (y * r).sum().backward()
    return y.detach(), [x.grad] + [p.grad for p in params]


def close(a, b, precision, share=1e-2):
    a, b = a.float(), b.float()
    if precision == "fp32":
        return torch.allclose(a, b, atol=1e-5, rtol=0)
    return bool((a - b).abs().max() <= share * b.abs().max() + 1e-6)


CONV_CASES = [(6, 8, 3, 1), (6, 8, 1, 1), (6, 8, 4, 2)]  # (in, out, kernel, groups)


def random_conv(cin, cout, k, groups, weight_norm=True):
    conv = CausalConv(cin, cout, k, groups=groups, weight_norm=weight_norm)
    with torch.no_grad():
        conv.bias.normal_()
        if weight_norm:
            conv.weight_g.uniform_(0.5, 2.0)
    return conv
