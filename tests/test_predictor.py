"""The predictor: the paper's parameter counts and initialisation, hand-computed rollouts (with and
without the refinement network), feedback of predictions, fully convolutional prediction, and the
identity start of the filter generators."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfn.generators import DFN, CondConv, DynamicConv, DyNet, HDFNet, PixelBaseline
from dfn.generators.initialisation import he_uniform_
from dfn.predictor import VideoPredictor


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_paper_parameter_counts():
    # De Brabandere et al. 2016 (docs/paper.md): the authors' Moving MNIST DFN and its baseline.
    assert count(VideoPredictor(DFN(kernel_size=9))) == 637_361
    assert count(VideoPredictor(PixelBaseline(kernel_size=9))) == 637_443
    # ... and their highway network: buffer 2, hidden 64, 11x11 filters with dynamic bias.
    highway = dict(buffer_len=2, hidden=64, layout="highway", untied_input_bias=True, image_size=64)
    assert count(VideoPredictor(DFN(kernel_size=11, dynamic_bias=True), **highway)) == 368_122
    assert count(VideoPredictor(PixelBaseline(kernel_size=11, dynamic_bias=True), **highway)) == 368_245


def test_refinement_network_parameter_counts():
    # docs/paper.md: +37,857 with one input frame, +38,145 with two (the authors' refinement_network=True).
    assert count(VideoPredictor(DFN(kernel_size=9), refinement=True)) == 675_218
    highway = dict(buffer_len=2, hidden=64, layout="highway", untied_input_bias=True, image_size=64)
    assert count(VideoPredictor(DFN(kernel_size=11, dynamic_bias=True), refinement=True, **highway)) == 406_267


def test_arguments_after_the_generator_are_keyword_only():
    with pytest.raises(TypeError):
        VideoPredictor(DFN(kernel_size=3), 1)  # a positional `channels` would silently shift every later one


# ---------------------------------------------------------------- the authors' initialisation


def test_he_uniform_is_lasagne_gain_one():
    # Lasagne HeUniform(): U(±sqrt(3 / fan_in)), fan_in = in_channels * kh * kw; biases zero.
    torch.manual_seed(0)
    conv = he_uniform_(nn.Conv2d(64, 128, 3))
    bound = math.sqrt(3.0 / (64 * 3 * 3))  # = 0.0722; PyTorch's leaky-ReLU gain would give 0.1021
    w = conv.weight.detach()
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound  # 73,728 draws fill the interval
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.01 * bound  # uniform: std = bound / sqrt(3)
    assert torch.equal(conv.bias.detach(), torch.zeros(128))
    linear = he_uniform_(nn.Linear(300, 400))
    assert linear.weight.abs().max() <= math.sqrt(3.0 / 300) and linear.weight.abs().max() > 0.99 * math.sqrt(3.0 / 300)


def test_predictor_layers_use_the_authors_init():
    torch.manual_seed(0)
    predictor = VideoPredictor(DFN(kernel_size=9), refinement=True)
    for name, m in predictor.named_modules():
        if isinstance(m, nn.Conv2d):
            cout, cin, kh, kw = m.weight.shape
            bound = math.sqrt(3.0 / (cin * kh * kw))
            assert m.weight.abs().max() <= bound, name
            if m.weight.numel() >= 10_000:  # enough draws to come close to the bound
                assert m.weight.abs().max() > 0.95 * bound, name
            assert m.bias is None or not m.bias.detach().any(), name


def test_untied_input_bias_is_per_pixel_and_size_checked():
    predictor = VideoPredictor(DFN(kernel_size=3), layout="highway", untied_input_bias=True, image_size=8,
                               encoder_width=2, hidden=4, decoder_width=4, features=4)
    assert predictor.input_bias.shape == (2, 8, 8) and predictor.encoder[0].bias is None
    assert predictor(torch.rand(1, 2, 1, 8, 8), frames_out=1).shape == (1, 1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"VideoPredictor: frames must be 8x8 with the untied input bias \(.*"
                                         r"one bias per pixel for 8x8 frames.*image_size 8.*untied_input_bias: false.*"
                                         r"got \(16, 16\) frames$"):
        predictor(torch.rand(1, 2, 1, 16, 16), frames_out=1)


@pytest.mark.parametrize("layout", ["moving_mnist", "highway"])
def test_fully_convolutional_on_larger_frames(layout):
    # Without a per-pixel bias nothing depends on the frame size: a model meant for 32x32 frames predicts
    # 48x40 ones, and its centre filter copies them exactly (no crop, no shift, no padding artefact).
    predictor = fixed_filter_predictor((0, 0), layout=layout)
    assert predictor(torch.rand(1, 3, 1, 32, 32), frames_out=1).shape == (1, 1, 1, 32, 32)
    frames = torch.rand(2, 3, 1, 48, 40)
    predictions = predictor(frames, frames_out=2)
    assert predictions.shape == (2, 2, 1, 48, 40)
    torch.testing.assert_close(predictions[:, 1], frames[:, -1])


def fixed_filter_predictor(offset: tuple[int, int], kernel_size: int = 3, **kwargs) -> VideoPredictor:
    """A predictor whose generator always emits the one-hot filter at `offset` (no softmax)."""
    generator = DFN(kernel_size=kernel_size, softmax=False)
    predictor = VideoPredictor(generator, encoder_width=2, hidden=4, decoder_width=4, features=4, **kwargs)
    with torch.no_grad():
        generator.head.weight.zero_()
        generator.head.bias.zero_()
        dy, dx = offset
        k = (dy + kernel_size // 2) * kernel_size + (dx + kernel_size // 2)  # row-major window order
        generator.head.bias[k] = 1.0
    return predictor


def test_centre_filter_reproduces_the_last_frame():
    frames = torch.rand(2, 4, 1, 12, 10)
    predictions = fixed_filter_predictor((0, 0))(frames, frames_out=3)
    assert predictions.shape == (2, 3, 1, 12, 10)
    for t in range(3):
        torch.testing.assert_close(predictions[:, t], frames[:, -1])


def test_rollout_feeds_back_its_own_predictions():
    # A filter reading the pixel one to the left moves the image one pixel right per step; fed back,
    # prediction n is the last input shifted by n pixels (with zeros entering from the left).
    frames = torch.rand(1, 3, 1, 8, 8)
    predictions = fixed_filter_predictor((0, -1))(frames, frames_out=3)
    last = frames[:, -1]
    for n in range(1, 4):
        expected = torch.zeros_like(last)
        expected[..., n:] = last[..., :-n]
        torch.testing.assert_close(predictions[:, n - 1], expected)


def shift_right(x: torch.Tensor) -> torch.Tensor:
    """Content one pixel to the right, zeros entering on the left (the filter at offset (0, -1))."""
    out = torch.zeros_like(x)
    out[..., 1:] = x[..., :-1]
    return out


def test_refinement_by_hand_and_fed_back():
    # Refined prediction = filtered + lrelu(conv(lrelu(conv(... concat(filtered, inputs))))), and the
    # *refined* prediction is what the next step reads. Computed here with F.conv2d, independently.
    torch.manual_seed(0)
    predictor = fixed_filter_predictor((0, -1), refinement=True)
    with torch.no_grad():  # non-zero biases so that an omitted bias or activation shows
        for conv in predictor.refinement:
            conv.bias.uniform_(-0.1, 0.1)
    weights = [(c.weight.detach(), c.bias.detach()) for c in predictor.refinement]

    def refine(filtered, inputs):
        x = torch.cat([filtered, inputs], dim=1)
        for w, b in weights:
            x = F.leaky_relu(F.conv2d(x, w, b, padding=1), 0.01)
        return filtered + x

    frames = torch.rand(2, 3, 1, 9, 8)
    predictions = predictor(frames, frames_out=2)
    p1 = refine(shift_right(frames[:, -1]), frames[:, -1])
    p2 = refine(shift_right(p1), p1)
    torch.testing.assert_close(predictions[:, 0], p1)
    torch.testing.assert_close(predictions[:, 1], p2)
    assert (predictions[:, 0] - shift_right(frames[:, -1])).abs().max() > 1e-3  # the residual is not zero


def test_baseline_is_linear_and_fed_back_raw():
    # The authors' baseline ends in an identity activation: pixels outside [0, 1] are neither squashed
    # nor clipped before they are fed back.
    generator = PixelBaseline(kernel_size=3)
    predictor = VideoPredictor(generator, encoder_width=2, hidden=4, decoder_width=4, features=4)
    last = generator.head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-3.0)
    predictions = predictor(torch.rand(1, 3, 1, 8, 8), frames_out=2)
    torch.testing.assert_close(predictions, torch.full_like(predictions, -3.0))
    features = torch.randn(2, 4, 5, 5)
    head = generator.head
    torch.testing.assert_close(generator(features), last(head[0](features)))  # affine, no activation
    sigmoid = PixelBaseline(kernel_size=3, output="sigmoid")  # ours, as an explicit option
    sigmoid.build(4, 1)
    torch.testing.assert_close(sigmoid(features), torch.sigmoid(sigmoid.head(features)))
    with pytest.raises(ValueError, match="output must be one of 'linear', 'sigmoid'"):
        PixelBaseline(output="tanh")


# ---------------------------------------------------------------- identity start


def smooth_sequence(batch: int = 2, frames: int = 4, size: int = 32) -> torch.Tensor:
    """Real-looking frames: random 8x8 images upsampled bilinearly to size x size, (B, T, 1, S, S) in [0, 1]."""
    low = torch.rand(batch * frames, 1, 8, 8)
    high = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)  # (B*T, 1, S, S)
    return high.view(batch, frames, 1, size, size)


IDENTITY_START = {
    "dfn-local": lambda: DFN(kernel_size=9, identity_init=True),
    "dfn-conv": lambda: DFN(kernel_size=9, mode="conv", identity_init=True),
    "dfn-highway": lambda: DFN(kernel_size=11, dynamic_bias=True, identity_init=True),
    "dfn-full-scale": lambda: DFN(kernel_size=9, dynamic_bias=True, identity_init=True, identity_weight_scale=1.0),
    "condconv-conv": lambda: CondConv(kernel_size=9),
    "condconv-local": lambda: CondConv(kernel_size=9, mode="local", dynamic_bias=True),
    "dynamicconv-conv": lambda: DynamicConv(kernel_size=9, identity_init=True),
    "dynamicconv-local": lambda: DynamicConv(kernel_size=9, mode="local", identity_init=True),
    "dynet-learned": lambda: DyNet(kernel_size=9),
    "dynet-local": lambda: DyNet(kernel_size=9, mode="local", dynamic_bias=True),
    "dynet-polynomial": lambda: DyNet(kernel_size=9, bank="polynomial"),
    "hdfnet": lambda: HDFNet(),
}


@pytest.mark.parametrize("name", list(IDENTITY_START))
def test_identity_start_predicts_the_last_frame(name):
    torch.manual_seed(0)
    frames = smooth_sequence()
    model = VideoPredictor(IDENTITY_START[name](), encoder_width=8, hidden=32, decoder_width=16, features=32)
    with torch.no_grad():
        predictions = model.eval()(frames, frames_out=3)
    for t in range(3):  # also after feeding back its own predictions
        assert F.mse_loss(predictions[:, t], frames[:, -1]) < 1e-3, (name, t)


def test_paper_init_does_not_start_at_the_last_frame():
    # The control for the test above: with the authors' He init the filters are random blurs (measured
    # MSE to copy-last ~3e-2 on these frames), so the identity-start test is not passing trivially.
    torch.manual_seed(0)
    frames = smooth_sequence()
    model = VideoPredictor(DFN(kernel_size=9), encoder_width=8, hidden=32, decoder_width=16, features=32)
    with torch.no_grad():
        assert F.mse_loss(model.eval()(frames, frames_out=1)[:, 0], frames[:, -1]) > 1e-2


def tap_gradients(name: str, generator) -> torch.Tensor:
    """Per-tap gradient magnitude of what makes the filters' K*K taps: (K*K,) (or (D*C*K*K,) for HDFNet)."""
    if hasattr(generator, "bank"):  # kernel mixtures: the learned bank (N, K*K[+1])
        taps = generator.kernel_size**2
        if not generator.bank.requires_grad:  # DyNet's fixed polynomials: the coefficients make the taps
            return generator.coefficient_module[-1].weight.grad.abs().sum(1)
        return generator.bank.grad[:, :taps].abs().sum(0)
    if isinstance(generator, HDFNet):
        return generator.head.weight.grad[: generator.head.out_channels - generator.logits].abs().flatten(1).sum(1)
    taps = generator.kernel_size**2
    return generator.head.weight.grad[:taps].abs().flatten(1).sum(1)  # DFN: head rows of the K*K taps


@pytest.mark.filterwarnings("ignore:DynamicConv is training with a fixed temperature")  # one backward, no schedule
@pytest.mark.parametrize("name", list(IDENTITY_START))
def test_identity_start_still_trains_every_tap(name):
    # Starting at the centre filter must not freeze the others: after one backward every tap gets a gradient.
    torch.manual_seed(0)
    generator = IDENTITY_START[name]()
    model = VideoPredictor(generator, encoder_width=8, hidden=32, decoder_width=16, features=32)
    frames = smooth_sequence()
    targets = torch.roll(frames[:, -1], shifts=(2, -3), dims=(-2, -1))  # the content moved: off-centre taps help
    F.mse_loss(model(frames, frames_out=1)[:, 0], targets).backward()
    grads = tap_gradients(name, generator)
    assert (grads > 0).all(), f"{name}: taps without gradient: {(grads == 0).nonzero().flatten().tolist()}"


def trunk_gradient(identity_weight_scale: float) -> float:
    """Mean |gradient| of the encoder's first conv after one shift-prediction backward (identity start)."""
    torch.manual_seed(0)
    generator = DFN(kernel_size=9, identity_init=True, identity_weight_scale=identity_weight_scale)
    model = VideoPredictor(generator, encoder_width=8, hidden=32, decoder_width=16, features=32)
    frames = smooth_sequence()
    targets = torch.roll(frames[:, -1], shifts=(1, -1), dims=(-2, -1))
    F.mse_loss(model(frames, frames_out=1)[:, 0], targets).backward()
    return model.encoder[0].weight.grad.abs().mean().item()


def test_full_scale_identity_start_feeds_the_trunk():
    # docs/real_video.md, "Measured on the sample clips": with the head's weights at 1 % of their He bound the trunk's
    # gradient starts far smaller than with the full bound (here 4.1e-9 vs 4.3e-7, ~100x; on carphone
    # 2.6e-8 vs 1.7e-5, around Adam's eps of 1e-8); both start at copy-last (the identity tests above
    # cover "dfn-full-scale").
    small, full = trunk_gradient(0.01), trunk_gradient(1.0)
    assert full > 30 * small, (small, full)


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, True, "1"])
def test_identity_weight_scale_is_checked(bad):
    with pytest.raises(ValueError, match="identity_weight_scale must be a number in \\(0, 1\\]"):
        DFN(identity_init=True, identity_weight_scale=bad)


def test_softmax_filters_keep_predictions_in_unit_range():
    predictor = VideoPredictor(DFN(kernel_size=5), encoder_width=4, hidden=8, decoder_width=8, features=8)
    predictions = predictor(torch.rand(2, 3, 1, 16, 16), frames_out=4)
    assert predictions.min() >= 0 and predictions.max() <= 1 + 1e-6


# ---------------------------------------------------------------- scheduled sampling (ours, off by default)


def test_feeding_the_truth_is_teacher_forcing_per_sample():
    # Independent truth: a step that reads the true frame k is the 1-step prediction of a model warmed
    # up on the inputs followed by the true frames 0..k-1 (same weights, same recurrence).
    torch.manual_seed(0)
    model = VideoPredictor(DFN(kernel_size=3), encoder_width=4, hidden=8, decoder_width=8, features=8).eval()
    frames, truth = torch.rand(2, 3, 1, 12, 12), torch.rand(2, 4, 1, 12, 12)
    feed = torch.tensor([[True, True, True, True], [False, False, False, False]])
    with torch.no_grad():
        mixed = model(frames, 4, truth=truth, feed_truth=feed)
        free = model(frames, 4)
        for k in range(4):
            forced = model(torch.cat([frames, truth[:, :k]], dim=1), 1)[:, 0]
            torch.testing.assert_close(mixed[0, k], forced[0])  # sample 0 always read the truth
        torch.testing.assert_close(mixed[1], free[1])  # sample 1 never did: the paper's rollout
        assert not torch.allclose(mixed[0, 1:], free[0, 1:])  # and reading the truth changed sample 0


def test_scheduled_sampling_arguments_are_checked():
    model = VideoPredictor(DFN(kernel_size=3), encoder_width=4, hidden=8, decoder_width=8, features=8)
    frames = torch.rand(2, 3, 1, 8, 8)
    with pytest.raises(ValueError, match=r"VideoPredictor: feed_truth must be given with truth \(scheduled sampling "
                                         r"needs both\), got None$"):
        model(frames, 2, truth=torch.rand(2, 2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"VideoPredictor: truth and feed_truth must be \(B, frames_out=2, C, H, W\) "
                                         r"and \(B, frames_out\), got \(2, 3, 1, 8, 8\) and \(2, 3\)$"):
        model(frames, 2, truth=torch.rand(2, 3, 1, 8, 8), feed_truth=torch.ones(2, 3, dtype=torch.bool))


def test_warm_up_frames_change_the_prediction():
    # The hidden state carries the past: the same last frame after different histories predicts differently.
    torch.manual_seed(0)
    predictor = VideoPredictor(DFN(kernel_size=5), encoder_width=4, hidden=8, decoder_width=8, features=8)
    a = torch.rand(1, 4, 1, 16, 16)
    b = a.clone()
    b[:, 0] = torch.rand(1, 1, 16, 16)
    assert not torch.allclose(predictor(a, 1), predictor(b, 1))


def test_buffer_and_channels():
    predictor = VideoPredictor(DFN(kernel_size=3, dynamic_bias=True), channels=3, buffer_len=2,
                               encoder_width=4, hidden=8, decoder_width=8, features=8)
    assert predictor(torch.rand(2, 3, 3, 9, 11), frames_out=2).shape == (2, 2, 3, 9, 11)
    with pytest.raises(ValueError, match="VideoPredictor: the number of input frames T must be >= buffer_len=2, got 1$"):
        predictor(torch.rand(2, 1, 3, 9, 11), frames_out=2)
    with pytest.raises(ValueError, match=r"VideoPredictor: frames must be \(B, T, C=3, H, W\), got \(2, 3, 1, 9, 11\)$"):
        predictor(torch.rand(2, 3, 1, 9, 11), frames_out=2)


def test_filter_flow_of_a_shifting_filter():
    # A one-hot filter reading one pixel to the left (dx = -1) moves content one pixel right: flow (0, +1).
    from dfn.callbacks import filter_flow, flow_colours

    k = 3
    filters = torch.full((1, k * k, 4, 5), -1e4)
    filters[:, 1 * k + 0] = 0.0  # window row 1 (dy = 0), column 0 (dx = -1)
    flow = filter_flow(filters, k, softmax=True)
    torch.testing.assert_close(flow, torch.stack([torch.zeros(1, 4, 5), torch.ones(1, 4, 5)], dim=1))
    colours = flow_colours(flow, max_displacement=1.0)
    assert colours.shape == (1, 3, 4, 5) and colours.max() <= 1 and colours.amax(1).min() == 1  # full length


# ---------------------------------------------------------------- the batched rollout equals the stepwise one


def rollout_pair(predictor: VideoPredictor, frames: torch.Tensor, frames_out: int, **sampling):
    """Predictions and gradients (parameters, frames, truth) of `forward` and of `rollout_stepwise`
    for the same random output gradient."""
    inputs = [p for p in predictor.parameters()] + [frames] + ([sampling["truth"]] if sampling else [])
    results = []
    for rollout in (predictor.forward, predictor.rollout_stepwise):
        predictions = rollout(frames, frames_out, **sampling)
        torch.manual_seed(123)  # the same output gradient for both (randn_like would follow their layouts)
        grad = torch.randn(predictions.shape, dtype=predictions.dtype)
        grads = torch.autograd.grad(predictions, inputs, grad, allow_unused=True)
        results.append((predictions, grads))
    return results


# Every value of every setting, and every pair of values of two settings, appears at least once (all 48
# combinations took two minutes on the 2-core CPU; these ten cover every pair).
@pytest.mark.parametrize("layout,buffer_len,untied_input_bias,refinement,sampling", [
    ("moving_mnist", 1, False, False, False), ("moving_mnist", 2, True, True, True),
    ("moving_mnist", 3, True, False, True), ("moving_mnist", 3, False, True, False),
    ("highway", 1, True, True, False), ("highway", 2, False, False, True),
    ("highway", 3, False, True, True), ("highway", 1, False, False, True),
    ("highway", 2, True, False, False), ("moving_mnist", 1, True, True, True),
])
def test_batched_ground_truth_steps_equal_the_stepwise_rollout(layout, buffer_len, untied_input_bias,
                                                               refinement, sampling):
    """`forward` runs the encoder and mid layer of the steps that read ground truth only (the warm-up
    steps and the first prediction) as one call over B·T windows, in NHWC on CPU; `rollout_stepwise` is
    the step-by-step rollout in the frames' own layout. In float64 both must agree to rounding, forward
    and backward (parameters, frames, and the true frames scheduled sampling feeds in)."""
    torch.manual_seed(buffer_len * 10 + 2 * untied_input_bias + refinement)
    predictor = VideoPredictor(DFN(kernel_size=3), channels=2, buffer_len=buffer_len, encoder_width=2, hidden=4,
                               decoder_width=4, features=4, layout=layout, untied_input_bias=untied_input_bias,
                               image_size=8, refinement=refinement).double()
    with torch.no_grad():  # non-zero biases everywhere, or a misplaced bias would go unnoticed
        for p in predictor.parameters():
            if p.dim() <= 3:
                p.uniform_(-0.3, 0.3)
    B, t_in, t_out = 3, 4, 3
    frames = torch.rand(B, t_in, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    extra = {}
    if sampling:  # scheduled sampling: per sample and step, the true frame or the prediction is read
        extra = dict(truth=torch.rand(B, t_out, 2, 8, 8, dtype=torch.float64, requires_grad=True),
                     feed_truth=torch.tensor([[True, False, True], [False, False, True], [True, True, False]]))
    (fast, fast_grads), (ref, ref_grads) = rollout_pair(predictor, frames, t_out, **extra)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(fast_grads, ref_grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert not torch.equal(fast[:, 0], fast[:, -1])  # the rollout did not degenerate to a constant


def test_ground_truth_steps_are_one_encoder_call():
    """T_in = 5, buffer 2: the 4 ground-truth windows go through the encoder as one batch of 4·B; the
    remaining frames_out - 1 = 2 steps one by one (batch B)."""
    predictor = VideoPredictor(DFN(kernel_size=3), buffer_len=2, encoder_width=2, hidden=4, decoder_width=4,
                               features=4)
    batches = []
    predictor.encoder[0].register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    predictor(torch.rand(3, 5, 1, 8, 8), frames_out=3)
    assert batches == [3 * 4, 3, 3]


def test_cpu_filters_reach_the_filtering_layer_taps_last():
    """On CPU the rollout runs NHWC: the DFN head's filters come with each pixel's K*K values adjacent
    (the layout `dfn.ops.softmax_local_filter` streams through); their values are those of the NCHW rollout."""
    torch.manual_seed(0)
    predictor = VideoPredictor(DFN(kernel_size=5), encoder_width=2, hidden=4, decoder_width=4, features=4)
    frames = torch.rand(2, 3, 1, 12, 10)
    predictions, filters = predictor(frames, 2, keep_filters=True)
    assert filters[0].shape == (2, 25, 12, 10) and filters[0].stride(1) == 1
    reference, reference_filters = predictor.rollout_stepwise(frames, 2, keep_filters=True)
    assert reference_filters[0].is_contiguous()  # NCHW in the stepwise reference
    torch.testing.assert_close(predictions, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(filters[1], reference_filters[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["HDFNet", "CondConv", "PixelBaseline"])
def test_batched_rollout_with_other_generators(name):
    """Per-channel filters (HDFNet), dynamic convolution (CondConv) and the pixel baseline read NHWC
    features on CPU too; the batched rollout equals the stepwise one in float64."""
    generator = {"HDFNet": lambda: HDFNet(kernel_size=3), "CondConv": lambda: CondConv(kernel_size=3),
                 "PixelBaseline": lambda: PixelBaseline(kernel_size=3)}[name]()
    torch.manual_seed(1)
    predictor = VideoPredictor(generator, channels=2, encoder_width=2, hidden=4, decoder_width=4,
                               features=4).double()
    frames = torch.rand(2, 3, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    (fast, fast_grads), (ref, ref_grads) = rollout_pair(predictor, frames, 2)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(fast_grads, ref_grads):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
