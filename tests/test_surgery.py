"""attach_aux_blocks: public-head equivalence on real backbones, train/eval, layouts, fallback, errors."""
import warnings

import pytest
import torch
from torch import nn

from auxsurgery import attach_aux_blocks, build_backbone
from auxsurgery.graph import HookTrunk

# (model, input size, attach points): explicit points keep the suite fast; "auto:2" exercises discovery.
EQUIVALENCE_CASES = [
    ("torchvision:resnet18", (3, 32, 32), "layer1,layer2,layer3"),
    ("torchvision:vgg16_bn", (3, 32, 32), "features.5,features.12"),
    ("torchvision:mobilenet_v3_small", (3, 64, 64), "auto:2"),
    ("torchvision:efficientnet_b0", (3, 64, 64), "features.2,features.3"),
    ("torchvision:convnext_tiny", (3, 64, 64), "features.1,features.3"),
    ("torchvision:swin_t", (3, 64, 64), "features.1,features.3"),
    ("torchvision:vit_b_16", (3, 224, 224), "encoder.layers.encoder_layer_1"),
    ("timm:resnet18", (3, 32, 32), "layer1,layer2"),
    ("timm:convnext_atto", (3, 64, 64), "auto:2"),
    ("timm:vit_tiny_patch16_224", (3, 224, 224), "blocks.0,blocks.4"),
    ("timm:mixer_b16_224", (3, 224, 224), "blocks.1"),
    ("timm:efficientnet_b0", (3, 64, 64), "blocks.1,blocks.2"),
]


@pytest.mark.parametrize("name,size,at", EQUIVALENCE_CASES, ids=[c[0] for c in EQUIVALENCE_CASES])
def test_public_head_is_bit_identical_and_all_heads_train(name, size, at):
    backbone = build_backbone(name, num_classes=7)
    aux = attach_aux_blocks(backbone, at=at, input_size=size).eval()
    x = torch.rand(2, *size)
    with torch.no_grad():
        logits = aux(x)
        reference = backbone(x)
    assert logits.shape == (len(aux.heads) + 1, 2, 7)
    assert torch.equal(logits[0], reference), "public head differs from the backbone"
    assert aux.public_model() is backbone

    aux.train()
    loss = nn.functional.cross_entropy(aux(x).flatten(0, 1), torch.arange(2).repeat(aux.num_heads))
    loss.backward()
    for head in aux.heads:
        grads = [p.grad for p in head.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


class TracedDropout(nn.Module):
    """Dropout whose mode fx bakes into the graph (timm's drop_path works this way)."""

    def forward(self, x):
        return nn.functional.dropout(x, 0.5, self.training)


def test_mode_reaches_the_public_backbone_root():
    # GoogLeNet returns a namedtuple with aux logits when its root module is in train mode.
    backbone = build_backbone("googlenet", num_classes=10).train()
    aux = attach_aux_blocks(backbone, at="inception3a", input_size=(3, 64, 64)).eval()
    assert not backbone.training and not backbone.net.training
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(aux(x)[0], aux.public_model()(x))


def test_one_trunk_pass_per_forward():
    backbone = build_backbone("resnet18", num_classes=10)
    aux = attach_aux_blocks(backbone, at="layer1,layer2", input_size=(3, 32, 32)).eval()
    calls = []
    aux.trunk.net.conv1.register_forward_hook(lambda *args: calls.append(1))
    aux(torch.rand(2, 3, 32, 32))
    assert len(calls) == 1


def test_train_and_eval_graphs_follow_mode():
    # Dropout must be active in train mode and off in eval mode, as in the original network.
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), TracedDropout(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4))
    aux = attach_aux_blocks(net, at="1", input_size=(3, 8, 8))
    x = torch.rand(4, 3, 8, 8)
    aux.eval()
    assert torch.equal(aux(x)[0], aux(x)[0])
    aux.train()
    assert not torch.equal(aux(x)[0], aux(x)[0])


def test_graph_follows_training_flags_set_directly():
    # State-restoring helpers set module.training without calling train(); the trunk must follow.
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), TracedDropout(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4))
    aux = attach_aux_blocks(net, at="1", input_size=(3, 8, 8)).train()
    aux.eval()
    for module in aux.modules():
        module.training = True
    x = torch.rand(4, 3, 8, 8)
    assert not torch.equal(aux(x)[0], aux(x)[0]), "eval graph (no dropout) still in use in train mode"


def test_attach_keeps_mode_and_batchnorm_statistics():
    backbone = build_backbone("resnet18", num_classes=10).train()
    before = backbone.net.bn1.running_mean.clone()
    aux = attach_aux_blocks(backbone, at="layer1", input_size=(3, 32, 32))
    assert aux.training and backbone.training
    assert torch.equal(backbone.net.bn1.running_mean, before)


def test_tuple_output_of_a_leaf_module_feeds_its_first_tensor():
    # nn.MultiheadAttention is an fx leaf returning (output, weights): a real tuple-valued attach point.
    class PatchAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, 16, 4, stride=4)
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            tokens = self.patch(x).flatten(2).transpose(1, 2)
            out, _ = self.attn(tokens, tokens, tokens)
            return self.fc(out.mean(1))

    net = PatchAttention().eval()
    aux = attach_aux_blocks(net, at="attn", input_size=(3, 16, 16)).eval()
    assert aux.spec["layouts"][0] == {"kind": "tokens", "channels": 16, "height": 4, "width": 4, "prefix_tokens": 0}
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(aux(x)[0], net(x))


def test_attach_point_without_a_feature_map_is_named_in_the_error():
    class ScalarTail(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            y = self.conv(x)
            return self.fc(y.mean((2, 3))) + y.mean()

    with pytest.raises(ValueError, match="attach point 'mean_1'"):
        attach_aux_blocks(ScalarTail(), at="mean_1", input_size=(3, 8, 8))


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        if x.sum() > -1e9:
            x = self.body(x).relu()
        return self.fc(x.mean((2, 3)))


def test_untraceable_model_falls_back_to_hooks_with_a_warning():
    net = Untraceable().eval()
    with pytest.warns(UserWarning, match="falling back to forward hooks"):
        aux = attach_aux_blocks(net, at="stem,body", input_size=(3, 16, 16))
    assert isinstance(aux.trunk, HookTrunk) and aux.spec["method"] == "hooks"
    x = torch.rand(3, 3, 16, 16)
    aux.eval()
    assert torch.equal(aux(x)[0], net(x))
    aux.train()
    aux(x).sum().backward()
    assert all(p.grad is not None for p in aux.heads.parameters())


class UntraceableStages(nn.Module):
    """Three resolution stages behind data-dependent control flow."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU())
        self.tail = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU())
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        if x.sum() > -1e9:
            x = self.tail(self.body(x))
        return self.fc(x.mean((2, 3)))


def test_untraceable_model_gets_auto_points_from_hooks():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aux = attach_aux_blocks(UntraceableStages(), at="auto:2", input_size=(3, 16, 16))
    assert aux.attach_points == ["stem", "body"] and aux.spec["method"] == "hooks"


def test_train_mode_tuple_output_gives_the_main_logits():
    # Inception-style models return (logits, aux logits) in train mode.
    aux = attach_aux_blocks("googlenet", at="inception3a", num_classes=10, input_size=(3, 64, 64)).train()
    assert aux(torch.rand(2, 3, 64, 64)).shape == (2, 2, 10)


def test_hook_fallback_rejects_non_module_points():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="unknown layer 'add'"):
            attach_aux_blocks(Untraceable(), at="add", input_size=(3, 16, 16))


def test_forcing_fx_on_an_untraceable_model_says_why():
    with pytest.raises(ValueError, match="cannot trace"):
        attach_aux_blocks(Untraceable(), at="stem", input_size=(3, 16, 16), method="fx")


def test_plain_module_with_mean_std_folds_normalisation_in():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    aux = attach_aux_blocks(net, at="1", input_size=(3, 8, 8), mean=[0.5] * 3, std=[0.25] * 3).eval()
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(aux(x)[0], net((x - 0.5) / 0.25))
    assert torch.equal(aux.public_model()(x), aux(x)[0])


def test_alpha_and_per_point_heads():
    aux = attach_aux_blocks("lenet5", at="pool1,pool2", num_classes=10, head=["paper-mnist", "default"],
                            alpha=[1.0, 0.5, 2.0])
    assert aux.alpha.tolist() == [1.0, 0.5, 2.0]
    assert aux.spec["heads"] == ["paper-mnist", "default"]
    assert aux.head_names == ["public", "pool1", "pool2"]


# ---- bad input -------------------------------------------------------------------------------

def test_unknown_model_lists_close_matches():
    with pytest.raises(ValueError, match="Close matches: resnet18"):
        attach_aux_blocks("resnet19", at="layer1", num_classes=10)


def test_unknown_layer_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown layer 'layr1'.*layer1"):
        attach_aux_blocks("resnet18", at="layr1", num_classes=10, input_size=(3, 32, 32))


@pytest.mark.parametrize("point", ["fc", "classifier.3", "classifier"])
def test_attach_point_in_the_classifier_is_refused(point):
    model = "resnet18" if point == "fc" else "mobilenet_v3_small"
    with pytest.raises(ValueError, match="in the classifier"):
        attach_aux_blocks(model, at=point, num_classes=10, input_size=(3, 32, 32))


def test_input_size_the_model_cannot_take():
    with pytest.raises(ValueError, match="cannot take input size 3x32x32"):
        attach_aux_blocks("vit_b_16", at="encoder.layers.encoder_layer_0", num_classes=10, input_size=(3, 32, 32))
    with pytest.raises(ValueError, match="cannot take input size 1x32x32"):
        attach_aux_blocks("resnet18", at="layer1", num_classes=10, input_size=(1, 32, 32))


def test_a_vit_at_another_input_size_names_img_size():
    """timm's ViT asserts deep in its forward; the message says how to build it for the data's size."""
    from auxsurgery.evaluation.checkpoint_eval import evaluate_checkpoint

    hint = r"takes 224x224 images only, and these are 32x32: build it for them with --model-kwargs img_size=32"
    vit = build_backbone("timm:vit_tiny_patch16_224", num_classes=10, model_kwargs={"depth": 1})
    with pytest.raises(ValueError, match=hint):
        attach_aux_blocks(vit, at="blocks.0", num_classes=10, input_size=(3, 32, 32))
    with pytest.raises(ValueError, match=hint):  # `attack --weights`: the plain model meets the data in the suite
        evaluate_checkpoint(vit, "synthetic", n=2)
    vit = build_backbone("timm:vit_tiny_patch16_224", num_classes=10, model_kwargs={"depth": 1, "img_size": 32})
    assert attach_aux_blocks(vit, at="blocks.0", num_classes=10, input_size=(3, 32, 32)).attach_points == ["blocks.0"]


@pytest.mark.parametrize("size", ["3x32", "ax32x32", (3, 0, 32)])
def test_malformed_input_size(size):
    with pytest.raises(ValueError, match="input size"):
        attach_aux_blocks("resnet18", at="layer1", num_classes=10, input_size=size)


def test_head_factory_with_wrong_output_shape():
    def bad_head(shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes + 1))

    with pytest.raises(ValueError, match=r"returns shape \[11\].*expected \[10\]"):
        attach_aux_blocks("resnet18", at="layer1", num_classes=10, input_size=(3, 32, 32), head=bad_head)


def test_head_factory_returning_a_non_module():
    with pytest.raises(TypeError, match="expected an nn.Module"):
        attach_aux_blocks("resnet18", at="layer1", num_classes=10, input_size=(3, 32, 32), head=lambda s, n: None)


def test_num_classes_must_match_the_model():
    backbone = build_backbone("resnet18", num_classes=10)
    with pytest.raises(ValueError, match="outputs 10 classes but num_classes=5"):
        attach_aux_blocks(backbone, at="layer1", num_classes=5, input_size=(3, 32, 32))


def test_repeated_or_empty_points():
    with pytest.raises(ValueError, match="repeat"):
        attach_aux_blocks("resnet18", at="layer1,layer1", num_classes=10, input_size=(3, 32, 32))
    with pytest.raises(ValueError, match="no attach points"):
        attach_aux_blocks("resnet18", at=" , ", num_classes=10, input_size=(3, 32, 32))


def test_feature_encoder_without_classifier_is_refused_with_its_output_shape():
    class TokenEncoder(nn.Module):
        """Like timm's *_enc models: patch tokens out, no class scores."""

        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, 6, 4, stride=4)

        def forward(self, x):
            return self.patch(x).flatten(2).transpose(1, 2)

    with pytest.raises(ValueError, match=r"not \[B, num_classes\] logits \(got a tensor of shape \(\d+, 4, 6\)\)"):
        attach_aux_blocks(TokenEncoder(), at="patch", input_size=(3, 8, 8))


def test_preact_resnet18_is_robustbenchs_resnet18_and_takes_heads():
    backbone = build_backbone("preact_resnet18_cifar", num_classes=10)
    # PreAct ResNet-18's 11.17M parameters: 2 blocks per stage at widths 64-512, three 1x1 shortcuts, a 10-class fc.
    convs = 3 * 64 * 9 + sum(9 * (cin * cout + cout * cout) + 9 * 2 * cout * cout
                             for cin, cout in ((64, 64), (64, 128), (128, 256), (256, 512)))
    shortcuts = 64 * 128 + 128 * 256 + 256 * 512
    blocks = [(64, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
    batchnorms = 2 * (sum(cin + cout for cin, cout in blocks) + 512)  # two BNs a block, one at the end
    assert sum(p.numel() for p in backbone.parameters()) == convs + shortcuts + batchnorms + 512 * 10 + 10
    aux = attach_aux_blocks(backbone, at="auto:3", input_size=(3, 32, 32))
    assert aux.attach_points == ["layer1", "layer2", "layer3"]
    assert aux(torch.rand(2, 3, 32, 32)).shape == (4, 2, 10)
