"""Model zoo: shapes, normalization buffers, FedBN key sets, config errors."""

import pytest
import torch
from torch import nn

from fl_sim.models import (
    ModelError,
    Normalize,
    available_models,
    bn_layers,
    bn_state_keys,
    build_model,
    init_uniform,
    register_model,
    shared_state_keys,
)

SHAPES = [(3, 32, 32), (1, 28, 28)]
MODELS = ["convnet", "lenet", "mlp", "resnet18"]


def test_available_models() -> None:
    assert available_models() == sorted(MODELS)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_logits_shape(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = build_model(name, shape, 10).eval()
    x = torch.rand(2, *shape)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("norm", ["group", "none"])
def test_resnet18_other_norms_run(norm: str) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", (3, 32, 32), 10, norm=norm)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_resnet18_small_and_large_inputs() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", (3, 8, 8), 5).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 8, 8)).shape == (1, 5)
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 5)


def test_resnet18_norm_layers() -> None:
    batch = build_model("resnet18", (3, 32, 32), 10, norm="batch")
    group = build_model("resnet18", (3, 32, 32), 10, norm="group")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in batch.modules()) == 20
    assert len(bn_layers(batch)) == 20
    assert not any(isinstance(m, nn.BatchNorm2d) for m in group.modules())
    gns = [m for m in group.modules() if isinstance(m, nn.GroupNorm)]
    assert len(gns) == 20 and all(m.num_groups == 32 for m in gns)
    assert bn_layers(group) == []


def test_resnet18_param_count() -> None:
    model = build_model("resnet18", (3, 32, 32), 10)
    n = sum(p.numel() for p in model.parameters())
    assert n == pytest.approx(11.17e6, rel=0.005)


def test_default_norm_is_per_model() -> None:
    assert bn_layers(build_model("resnet18", (3, 32, 32), 10))
    for name in ("convnet", "lenet", "mlp"):
        model = build_model(name, (3, 32, 32), 10)
        assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in model.modules())


@pytest.mark.parametrize("name", MODELS)
def test_normalize_first_and_not_in_state_dict(name: str) -> None:
    model = build_model(name, (3, 32, 32), 10)
    first = next(iter(model.children()))
    assert isinstance(first, Normalize)
    assert torch.allclose(first.mean.flatten(), torch.full((3,), 0.5))
    assert torch.allclose(first.std.flatten(), torch.full((3,), 0.5))
    keys = model.state_dict().keys()
    assert not any(k.endswith(("normalize.mean", "normalize.std")) for k in keys)
    # A fresh model loads the state strictly, i.e. nothing extra must travel.
    build_model(name, (3, 32, 32), 10).load_state_dict(model.state_dict())


def test_normalize_custom_stats() -> None:
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    model = build_model("mlp", (3, 4, 4), 2, mean=mean, std=std)
    x = torch.rand(1, 3, 4, 4)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(model.normalize(x), expected)
    with pytest.raises(ModelError, match=r"^model\.mean:"):
        build_model("mlp", (3, 4, 4), 2, mean=(0.1, 0.2))
    with pytest.raises(ModelError, match=r"^model\.std:"):
        build_model("mlp", (1, 4, 4), 2, std=0.0)


def test_bn_state_keys() -> None:
    model = build_model("resnet18", (3, 32, 32), 10)
    keys = bn_state_keys(model)
    assert len(keys) == 20 * 5
    suffixes = {k.rsplit(".", 1)[1] for k in keys}
    assert suffixes == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    assert "net.bn1.running_mean" in keys
    assert "net.layer2.0.shortcut.1.weight" in keys
    assert "net.conv1.weight" not in keys
    assert bn_state_keys(build_model("resnet18", (3, 32, 32), 10, norm="group")) == set()


def test_shared_state_keys() -> None:
    model = build_model("resnet18", (3, 32, 32), 10)
    all_keys = list(model.state_dict())
    bn = bn_state_keys(model)

    fedbn = shared_state_keys(model, fedbn=True)
    assert not set(fedbn) & bn
    assert fedbn == [k for k in all_keys if k not in bn]

    plain = shared_state_keys(model, fedbn=False)
    assert plain == [k for k in all_keys if not k.endswith("num_batches_tracked")]
    assert {"net.bn1.weight", "net.bn1.bias", "net.bn1.running_mean", "net.bn1.running_var"} <= set(plain)
    assert not any(k.endswith("num_batches_tracked") for k in plain)

    lenet = build_model("lenet", (1, 28, 28), 10)
    assert shared_state_keys(lenet, fedbn=True) == list(lenet.state_dict())


def test_mlp_first_layer_has_bias_and_analytic_inversion() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 28, 28), 10, hidden=64)
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert first.bias is not None and first.out_features == 64
    x = torch.rand(1, 1, 28, 28)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([3]))
    gw, gb = torch.autograd.grad(loss, [first.weight, first.bias])
    i = int(gb.abs().argmax())
    recovered = gw[i] / gb[i]  # input after in-model normalization
    assert torch.allclose(recovered, model.normalize(x).flatten(), atol=1e-4)


def test_lenet_architecture_and_dlg_init() -> None:
    model = build_model("lenet", (3, 32, 32), 10, init="dlg", seed=1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.stride) for c in convs] == [(12, (2, 2)), (12, (2, 2)), (12, (1, 1))]
    assert sum(isinstance(m, nn.Sigmoid) for m in model.modules()) == 3
    fc = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert fc.in_features == 12 * 8 * 8
    params = torch.cat([p.flatten() for p in model.parameters()])
    assert params.abs().max() <= 0.5 and params.abs().max() > 0.45
    again = build_model("lenet", (3, 32, 32), 10, init="dlg", seed=1)
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)
    layer = nn.Linear(3, 3)
    state = torch.random.get_rng_state()
    init_uniform(layer, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())


def test_convnet_width_option() -> None:
    model = build_model("convnet", (1, 28, 28), 10, width=8)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [8, 8, 16, 16]
    assert len(convs) + len(linears) == 6
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_unknown_model() -> None:
    with pytest.raises(ModelError) as err:
        build_model("vgg", (3, 32, 32), 10)
    msg = str(err.value)
    assert msg.startswith("model.name: unknown model 'vgg'; choose one of: ")
    assert all(name in msg for name in MODELS) and "\n" not in msg
    assert isinstance(err.value, ValueError)


def test_invalid_norm() -> None:
    with pytest.raises(ModelError, match=r"^model\.norm: .*accepted: batch, group, none$"):
        build_model("resnet18", (3, 32, 32), 10, norm="layer")
    with pytest.raises(ModelError, match=r"^model\.norm: .*accepted: none$"):
        build_model("convnet", (3, 32, 32), 10, norm="batch")


def test_invalid_options() -> None:
    with pytest.raises(ModelError, match=r"^model\.options: unknown option 'depth'.*accepted: width"):
        build_model("convnet", (3, 32, 32), 10, depth=3)
    with pytest.raises(ModelError, match=r"^model\.options\.init:"):
        build_model("lenet", (3, 32, 32), 10, init="xavier")
    with pytest.raises(ModelError, match=r"^model\.options\.hidden:"):
        build_model("mlp", (3, 32, 32), 10, hidden=0)
    with pytest.raises(ModelError, match=r"^model\.input_shape:"):
        build_model("mlp", (32, 32), 10)
    with pytest.raises(ModelError, match=r"^model\.num_classes:"):
        build_model("mlp", (3, 32, 32), 0)


def test_register_model_rejects_duplicates() -> None:
    with pytest.raises(ValueError):
        register_model("mlp")(lambda input_shape, num_classes, *, norm: nn.Identity())
