"""The fused batch norm (+ residual) + ReLU kernel against PyTorch's BatchNorm2d and ReLU."""

import logging

import pytest
import torch
from torch import nn

from tsla_core.kernels import batch_norm_act as fused
from tsla_core.kernels.batch_norm_act import BatchNormAct
from tsla_core.models import build_model, use_custom_kernels
from tsla_spec.spec import ModelSpec

CL = torch.channels_last
ACTS = ["none", "relu", "add_relu"]


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused kernel, built and switched on: a machine that cannot build it fails these tests
    (they would otherwise compare PyTorch's kernels with themselves and pass)."""
    monkeypatch.delenv(fused.ENV_SWITCH, raising=False)  # a TSLA_CUSTOM_KERNELS=0 in the shell
    if not fused._load_kernel():  # the reason is in the captured log of the first such test
        pytest.fail(
            "the fused batch-norm kernel could not be built: install g++ "
            "(scripts/test.sh does: apt-get install g++)",
            pytrace=False,
        )


def make_inputs(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    channels = shape[1]
    return {
        # an offset mean, as activations have: the variance must survive it
        "x": (torch.randn(shape, generator=gen) * 2 + 3).to(dtype).contiguous(memory_format=CL),
        "residual": torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=CL),
        "grad": torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=CL),
        "weight": torch.rand(channels, generator=gen) + 0.5,
        "bias": torch.randn(channels, generator=gen),
    }


def run(
    module: nn.Module, inputs: dict[str, torch.Tensor], act: str, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """One training forward/backward; outputs, gradients and the running statistics."""
    with torch.no_grad():
        module.weight.copy_(inputs["weight"])
        module.bias.copy_(inputs["bias"])
    x = inputs["x"].to(dtype).detach().requires_grad_()
    residual = inputs["residual"].to(dtype).detach().requires_grad_() if act == "add_relu" else None
    module.train()
    y = module(x, residual) if residual is not None else module(x)
    y.backward(inputs["grad"].to(dtype))
    out = {
        "y": y,
        "grad_x": x.grad,
        "grad_weight": module.weight.grad,
        "grad_bias": module.bias.grad,
        "running_mean": module.running_mean,
        "running_var": module.running_var,
    }
    if residual is not None:
        out["grad_residual"] = residual.grad
    return {name: value.detach().double() for name, value in out.items()}


def batch_norm(channels: int, act: str, fused_on: bool) -> BatchNormAct:
    module = BatchNormAct(channels, relu=act != "none")
    module.custom_kernels = fused_on
    return module


def largest_error(result: dict[str, torch.Tensor], exact: dict[str, torch.Tensor], name: str) -> float:
    scale = exact[name].abs().max().item() or 1.0
    return (result[name] - exact[name]).abs().max().item() / scale


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(8, 16, 6, 6), (4, 3, 5, 7), (16, 24, 2, 2)])
def test_at_least_as_accurate_as_pytorch(act: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    """Against a float64 run on the same (rounded) inputs, fused errs no more than PyTorch's kernels."""
    inputs = make_inputs(shape, dtype)
    exact = run(batch_norm(shape[1], act, fused_on=False).double(), inputs, act, torch.float64)
    native = run(batch_norm(shape[1], act, fused_on=False), inputs, act, dtype)
    fused_result = run(batch_norm(shape[1], act, fused_on=True), inputs, act, dtype)

    assert fused_result.keys() == exact.keys()
    floor = 1e-6 if dtype == torch.float32 else 1e-2  # rounding of the output dtype
    for name in exact:
        fused_error = largest_error(fused_result, exact, name)
        native_error = largest_error(native, exact, name)
        assert fused_error <= max(2 * native_error, floor), (name, fused_error, native_error)


@pytest.mark.usefixtures("kernel")
def test_running_statistics_and_counter_follow_pytorch() -> None:
    reference, module = batch_norm(16, "relu", fused_on=False), batch_norm(16, "relu", fused_on=True)
    for step in range(3):
        step_inputs = make_inputs((8, 16, 4, 4), torch.float32, seed=step)
        run(reference, step_inputs, "relu", torch.float32)
        run(module, step_inputs, "relu", torch.float32)
    torch.testing.assert_close(module.running_mean, reference.running_mean)
    torch.testing.assert_close(module.running_var, reference.running_var)
    assert int(module.num_batches_tracked) == int(reference.num_batches_tracked) == 3
    assert module.state_dict().keys() == nn.BatchNorm2d(16).state_dict().keys()


@pytest.mark.usefixtures("kernel")
def test_same_bits_with_one_thread_or_two() -> None:
    """Sums are combined in a fixed order, so exact resume does not depend on the thread count."""
    inputs = make_inputs((32, 16, 8, 8), torch.bfloat16)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(run(batch_norm(16, "add_relu", fused_on=True), inputs, "add_relu", torch.bfloat16))
    finally:
        torch.set_num_threads(threads)
    for name in results[0]:
        assert torch.equal(results[0][name], results[1][name]), name


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize("case", ["eval", "nchw", "switched_off"])
def test_pytorch_kernels_where_the_fused_one_does_not_apply(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = make_inputs((8, 16, 4, 4), torch.float32)
    if case == "nchw":
        inputs["x"] = inputs["x"].contiguous()
    if case == "switched_off":
        monkeypatch.setenv(fused.ENV_SWITCH, "0")
    module, reference = batch_norm(16, "relu", fused_on=True), batch_norm(16, "relu", fused_on=False)
    if case == "eval":
        module.eval()
        reference.eval()
        with torch.no_grad():
            assert torch.equal(module(inputs["x"]), reference(inputs["x"]))
        return
    assert not module._takes_fused_path(inputs["x"], None)
    got, want = run(module, inputs, "relu", torch.float32), run(reference, inputs, "relu", torch.float32)
    for name in want:
        assert torch.equal(got[name], want[name]), name


@pytest.mark.usefixtures("kernel")
def test_a_resnet_step_matches_the_unfused_model() -> None:
    spec = ModelSpec(arch="resnet18", stem="cifar", width=8)
    torch.manual_seed(0)
    unfused = use_custom_kernels(build_model(spec, 10, 3), False).to(memory_format=CL)
    model = build_model(spec, 10, 3).to(memory_format=CL)
    model.load_state_dict(unfused.state_dict())
    images = torch.randn(16, 3, 12, 12).contiguous(memory_format=CL)
    labels = torch.randint(0, 10, (16,))
    losses, grads = [], []
    for net in (unfused, model):
        loss = nn.functional.cross_entropy(net(images), labels)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-5)
    # the fused model is the same module tree: checkpoints of either load into the other
    assert model.state_dict().keys() == unfused.state_dict().keys()


def test_a_failed_build_falls_back_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_compiler(**_: object) -> None:
        raise RuntimeError("g++: not found")

    monkeypatch.setattr("torch.utils.cpp_extension.load", no_compiler)
    with caplog.at_level(logging.WARNING, logger="tsla_core.kernels.batch_norm_act"):
        assert fused._load_kernel.__wrapped__() is False
    assert "g++: not found" in caplog.text
