"""SmallMapConv2d: the weight gradient as a forward convolution equals nn.Conv2d's."""

import pytest
import torch
from torch import nn

from tsla_core.kernels.batch_norm_act import ENV_SWITCH
from tsla_core.kernels.small_map_conv import MAX_PIXELS, SmallMapConv2d

CL = torch.channels_last
# (in, out, kernel, stride, padding, map side, bias): 3x3 and 1x1, strided maps whose padded size
# is not a multiple of the stride (the gradient is cropped), a bias.
CASES = [
    (16, 16, 3, 1, 1, 4, False),
    (8, 16, 3, 2, 1, 4, False),
    (8, 12, 1, 2, 0, 3, False),
    (4, 6, 3, 2, 1, 3, True),
    (5, 7, 3, 1, 0, 4, True),
]


def pair(case: tuple[int, ...], dtype: torch.dtype = torch.float32) -> tuple[nn.Conv2d, SmallMapConv2d]:
    c_in, c_out, k, stride, padding, _, bias = case
    torch.manual_seed(0)
    reference = nn.Conv2d(c_in, c_out, k, stride, padding, bias=bool(bias)).to(dtype)
    conv = SmallMapConv2d(c_in, c_out, k, stride, padding, bias=bool(bias)).to(dtype)
    conv.load_state_dict(reference.state_dict())
    return reference, conv


def step(conv: nn.Module, x: torch.Tensor, grad: torch.Tensor, autocast: bool = False) -> list[torch.Tensor]:
    """Output and gradients (input, weight[, bias]) of one forward/backward."""
    x = x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = conv(x)
    out.backward(grad.to(out.dtype))
    grads = [p.grad for p in conv.parameters()]
    return [t.detach().double() for t in (out, x.grad, *grads)]


def inputs(case: tuple[int, ...], dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    c_in, c_out, k, stride, padding, side, _ = case
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, c_in, side, side, generator=gen, dtype=dtype).contiguous(memory_format=CL)
    out_side = (side + 2 * padding - k) // stride + 1
    grad = torch.randn(6, c_out, out_side, out_side, generator=gen).contiguous(memory_format=CL)
    return x, grad


@pytest.mark.parametrize("case", CASES)
def test_gradients_equal_nn_conv2d(case: tuple[int, ...]) -> None:
    reference, conv = pair(case)
    x, grad = inputs(case)
    assert conv._takes_fast_path(x)
    for got, want in zip(step(conv, x, grad), step(reference, x, grad), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES[:3])
def test_under_bf16_autocast_as_accurate_as_pytorch(case: tuple[int, ...]) -> None:
    """Against float64 on the same inputs, the bf16 result errs no more than nn.Conv2d's bf16 one."""
    reference, conv = pair(case)
    x, grad = inputs(case)
    exact = step(pair(case, torch.float64)[0], x.double(), grad.double())
    native = step(reference, x, grad, autocast=True)
    fast = step(conv, x, grad, autocast=True)
    for name, e, n, f in zip(["out", "grad_x", "grad_w", "grad_b"], exact, native, fast, strict=False):
        scale = e.abs().max().item()
        fast_error, native_error = (f - e).abs().max().item() / scale, (n - e).abs().max().item() / scale
        assert fast_error <= max(2 * native_error, 1e-2), (name, fast_error, native_error)


@pytest.mark.parametrize("case", ["large map", "no grad", "switched off", "custom kernels off"])
def test_pytorch_kernel_elsewhere(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    side = 8 if case == "large map" else 4
    assert (side * side <= MAX_PIXELS) == (case != "large map")
    reference, conv = pair((8, 8, 3, 1, 1, side, False))
    x = torch.randn(2, 8, side, side)
    if case == "switched off":
        monkeypatch.setenv(ENV_SWITCH, "0")
    if case == "custom kernels off":
        conv.custom_kernels = False
    if case == "no grad":
        with torch.no_grad():
            assert not conv._takes_fast_path(x)
            assert torch.equal(conv(x), reference(x))
        return
    assert not conv._takes_fast_path(x)
    grad = torch.randn(2, 8, side, side)
    for got, want in zip(step(conv, x, grad), step(reference, x, grad), strict=True):
        assert torch.equal(got, want)


def test_state_dict_of_nn_conv2d() -> None:
    reference, conv = pair(CASES[3])
    assert conv.state_dict().keys() == reference.state_dict().keys()
