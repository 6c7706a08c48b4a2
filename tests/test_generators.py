"""The dynamic-convolution family as filter generators: each reduces to a known case, gradients reach
every parameter inside the predictor, constructors validate, and the τ schedule is as in DynamicConv."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfn.generators import CondConv, CondInst, DMNet, DynamicConv, DyNet, HDFNet, TemperatureAnnealing
from dfn.generators.condinst import HeadFiltering
from dfn.generators.dynet import polynomial_bases
from dfn.generators.schedule import annealed_temperature, set_temperature
from dfn.predictor import VideoPredictor


def built(generator, features: int = 8, channels: int = 1):
    generator.build(features, channels)
    return generator


def static_conv(frame: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The same K×K filter (given as K*K row-major values) on every channel: F.conv2d, zero padding."""
    C, K = frame.shape[1], math.isqrt(kernel.numel())
    return F.conv2d(frame, kernel.reshape(1, 1, K, K).expand(C, 1, K, K), padding=K // 2, groups=C)


# ---------------------------------------------------------------- reductions to known cases


@pytest.mark.parametrize("mode", ["conv", "local"])
def test_condconv_one_expert_routing_one_is_static_filter(mode):
    torch.manual_seed(0)
    g = built(CondConv(kernel_size=3, mode=mode, experts=1, softmax=False), channels=2)
    with torch.no_grad():
        nn.init.zeros_(g.router.weight)
        g.router.bias.fill_(50.0)  # sigmoid(50) == 1 in float32: routing fixed to 1
    features, frame = torch.randn(2, 8, 6, 7), torch.rand(2, 2, 6, 7)
    assert torch.equal(g.routing(features), torch.ones_like(g.routing(features)))
    out = g.filtering(frame, g(features))
    torch.testing.assert_close(out, static_conv(frame, g.experts[0].detach()))


@pytest.mark.parametrize("mode", ["conv", "local"])
def test_dynamicconv_huge_temperature_mixes_uniformly(mode):
    torch.manual_seed(0)
    g = built(DynamicConv(kernel_size=3, mode=mode, temperature=1e9, softmax=False))
    filters = g(torch.randn(2, 8, 5, 5))
    mean = g.kernels.detach().mean(0)  # (K*K,)
    expected = mean.view(1, -1, 1, 1).expand_as(filters) if mode == "local" else mean.expand_as(filters)
    torch.testing.assert_close(filters, expected)
    # ... and with τ = 1 it does not (the attention is input-dependent):
    set_temperature(g, 1.0)
    assert not torch.allclose(g(torch.randn(2, 8, 5, 5)), expected, atol=1e-4)


@pytest.mark.parametrize("mode", ["conv", "local"])
def test_dynet_one_basis_is_that_basis_scaled(mode):
    torch.manual_seed(0)
    g = built(DyNet(kernel_size=3, mode=mode, degree=0, softmax=False))
    assert g.num_bases == 1
    torch.testing.assert_close(g.bases, torch.ones(1, 9))  # the constant, RMS 1 per entry
    features = torch.randn(2, 8, 4, 4)
    coef = g.coefficients(features if mode == "local" else features.mean((2, 3)))  # (B, 1[, H, W])
    filters = g(features)
    if mode == "local":
        torch.testing.assert_close(filters, coef * g.bases[0].view(1, 9, 1, 1))
    else:
        torch.testing.assert_close(filters, coef * g.bases[0])


def test_dynet_bases_orthogonal_and_span_gaussian_blobs():
    K = 9
    bases = polynomial_bases(K, 2).double()  # (6, 81)
    torch.testing.assert_close(bases @ bases.T, torch.eye(6, dtype=torch.float64) * K * K, atol=1e-4, rtol=0)
    # A Gaussian centred off-grid, (dy, dx) = (1.5, -2.25) px, sigma 0.7: its log is a quadratic, so the
    # softmax of its projection onto the bases is exactly the (normalised) Gaussian.
    r = torch.arange(K, dtype=torch.float64) - K // 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    log_blob = (-((y - 1.5) ** 2 + (x + 2.25) ** 2) / (2 * 0.7**2)).reshape(-1)
    projected = (log_blob @ bases.T / (K * K)) @ bases  # (81,)
    torch.testing.assert_close(torch.softmax(projected, 0), torch.softmax(log_blob, 0))
    # With softmax the constant basis is dropped (its coefficient could not learn).
    assert DyNet(kernel_size=K).num_bases == 5 and DyNet(kernel_size=K, softmax=False).num_bases == 6


@pytest.mark.parametrize("channels", [1, 3])
def test_condinst_identity_head_reproduces_frame(channels):
    C, hidden = channels, 8
    g = built(CondInst(output="linear"), channels=C)
    w1 = torch.zeros(hidden, C + 2)
    w1[:C, :C] = torch.eye(C)  # copy the frame channels, ignore the coordinates
    w2 = torch.eye(hidden)
    w3 = torch.zeros(C, hidden)
    w3[:, :C] = torch.eye(C)
    params = torch.cat([w1.flatten(), w2.flatten(), w3.flatten(), torch.zeros(hidden + hidden + C)])
    assert params.numel() == g.filtering.num_params
    with torch.no_grad():  # the controller ignores the features and emits that head
        nn.init.zeros_(g.controller.weight)
        g.controller.bias.copy_(params)
    frame = torch.rand(2, C, 6, 5)  # in [0, 1]: the ReLUs pass it unchanged
    torch.testing.assert_close(g.filtering(frame, g(torch.randn(2, 8, 6, 5))), frame)


def test_condinst_paper_head_has_169_parameters():
    # CondInst: 8 feature channels + 2 coordinates -> 8 -> 8 -> 1 mask.
    head = HeadFiltering([8 + 2, 8, 8, 1], coordinates=True, output="sigmoid")
    assert head.num_params == 169


@pytest.mark.parametrize("channels", [1, 3])
def test_hdfnet_one_hot_centre_is_identity(channels):
    torch.manual_seed(0)
    g = built(HDFNet(softmax=False), channels=channels)
    B, D, H, W = 2, 3, 7, 6
    filters = torch.zeros(B, D, channels, 9, H, W)
    filters[:, :, :, 4] = 1.0  # centre tap of each 3x3 window, at every dilation
    frame = torch.rand(B, channels, H, W)
    torch.testing.assert_close(g.filtering(frame, (filters, torch.randn(B, D, H, W))), frame)
    # The generator's own output has those shapes.
    generated, logits = g(torch.randn(B, 8, H, W))
    assert generated.shape == (B, D, channels, 9, H, W) and logits.shape == (B, D, H, W)


@pytest.mark.parametrize("channels", [1, 3])
def test_dmnet_scale_one_is_per_channel_scaling(channels):
    torch.manual_seed(0)
    g = built(DMNet(scales=(1,), softmax=False), channels=channels)
    features, frame = torch.randn(2, 8, 6, 6), torch.rand(2, channels, 6, 6)
    (kernel,), logits = g(features)
    assert kernel.shape == (2, channels, 1, 1)
    torch.testing.assert_close(kernel, g.reduce(features).mean((2, 3), keepdim=True))  # adaptive pooling to 1x1
    torch.testing.assert_close(g.filtering(frame, ((kernel,), logits)), frame * kernel)


def test_softmax_keeps_predictions_convex():
    torch.manual_seed(0)
    frame = torch.rand(2, 1, 12, 12)
    for g in [CondConv(mode="local"), DynamicConv(temperature=1.0), DyNet(mode="local"), HDFNet(), DMNet()]:
        g = built(g, features=8)
        out = g.filtering(frame, g(10 * torch.randn(2, 8, 12, 12)))
        assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6, type(g).__name__


# ---------------------------------------------------------------- gradients inside the predictor

# reduction=1 for the attention/coefficient MLPs: with 8 features the default F/4 = 2 hidden ReLU units
# can all be dead for a batch by chance, which would say nothing about the code under test.
GENERATORS = {
    "condconv-conv": lambda: CondConv(mode="conv"),
    "condconv-local": lambda: CondConv(mode="local", dynamic_bias=True),
    "dynamicconv-conv": lambda: DynamicConv(mode="conv", temperature=1.0, reduction=1),
    "dynamicconv-local": lambda: DynamicConv(mode="local", temperature=1.0, reduction=1, dynamic_bias=True),
    "dynet-conv": lambda: DyNet(mode="conv", reduction=1),
    "dynet-local": lambda: DyNet(mode="local", reduction=1, dynamic_bias=True),
    "condinst": lambda: CondInst(),
    "hdfnet": lambda: HDFNet(),
    "dmnet": lambda: DMNet(),
}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", list(GENERATORS))
def test_gradients_reach_every_generator_parameter(name, channels):
    torch.manual_seed(0)
    generator = GENERATORS[name]()
    model = VideoPredictor(generator, channels=channels, encoder_width=4, hidden=8, decoder_width=8, features=8)
    frames = torch.rand(2, 3, channels, 16, 16)
    predictions = model(frames, frames_out=2)
    assert predictions.shape == (2, 2, channels, 16, 16)
    F.mse_loss(predictions, torch.rand_like(predictions)).backward()
    for pname, p in generator.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient for {pname}"
    assert "generator" in generator.summary()


# ---------------------------------------------------------------- construction is validated


@pytest.mark.parametrize("make", [
    lambda: CondConv(experts=0),
    lambda: CondConv(mode="global"),
    lambda: DynamicConv(kernels=0),
    lambda: DynamicConv(temperature=0.0),
    lambda: DyNet(degree=-1),
    lambda: DyNet(degree=0),  # softmax leaves no basis
    lambda: DyNet(kernel_size=1, degree=1, softmax=False),  # 3 bases > 1 value
    lambda: CondInst(mode="local"),
    lambda: CondInst(head_layers=0),
    lambda: HDFNet(mode="conv"),
    lambda: HDFNet(dilations=(1, 0)),
    lambda: DMNet(mode="local"),
    lambda: DMNet(scales=(1, 4)),
    lambda: DMNet(scales=(3, 3)),
])
def test_bad_arguments_raise(make):
    with pytest.raises(ValueError):
        make()


# ---------------------------------------------------------------- temperature schedule


def test_temperature_schedule_by_hand():
    cb = TemperatureAnnealing(start=30.0, end=1.0, anneal_steps=100)
    assert cb.temperature(0) == 30.0
    assert cb.temperature(50) == pytest.approx(15.5)  # halfway: (30 + 1) / 2
    assert cb.temperature(100) == 1.0 and cb.temperature(10_000) == 1.0
    values = [cb.temperature(s) for s in range(0, 150)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone non-increasing
    assert annealed_temperature(5, 30.0, 1.0, 0) == 1.0  # no annealing: τ = end at once
    assert math.isclose(TemperatureAnnealing().temperature(0), 30.0)  # DynamicConv's defaults
    assert TemperatureAnnealing().temperature(TemperatureAnnealing().anneal_steps) == 1.0


def test_set_temperature_reaches_dynamicconv_inside_predictor():
    g = DynamicConv()
    model = VideoPredictor(g, channels=1, encoder_width=4, hidden=8, decoder_width=8, features=8)
    assert set_temperature(model, 7.0) == 1
    assert float(g.temperature) == 7.0
    assert "generator.temperature" in model.state_dict()  # a checkpoint keeps the τ it was trained at


def test_temperature_annealing_callback_in_a_trainer(tmp_path):
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.generator = built(DynamicConv(kernel_size=3, reduction=1))

        def training_step(self, batch, batch_idx):
            frame, features = batch[:, :1], batch[:, 1:]
            return self.generator.filtering(frame, self.generator(features)).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.rand(8, 9, 6, 6), batch_size=2)
    model, seen = Tiny(), []

    class Spy(L.Callback):  # runs after TemperatureAnnealing (callbacks run in list order)
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(float(pl_module.generator.temperature))

    trainer = L.Trainer(max_steps=4, callbacks=[TemperatureAnnealing(30.0, 1.0, anneal_steps=2), Spy()],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(model, data)
    assert seen == [30.0, 15.5, 1.0, 1.0]
    assert trainer.callback_metrics["generator/temperature"] == 1.0
