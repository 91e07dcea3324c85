"""Backbone weights, the head, and the two-stage fine-tuning callback's exact freezing."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torchvision
from torch import nn

from lungcnn.data.datamodule import LungCTDataModule
from lungcnn.errors import LungCNNInputError
from lungcnn.models.backbone import LOCAL_IMAGENET_WEIGHTS, conv_and_norm_layers, create_backbone
from lungcnn.models.module import LungClassifier
from lungcnn.models.net import LungNet
from lungcnn.training.callbacks.finetune import TwoStageFinetune


def test_offline_imagenet_weights_match_torchvision():
    """timm + mapped weights compute the same features as torchvision's own MobileNetV2 with its file."""
    ours = create_backbone("mobilenetv2_100", "imagenet").eval()
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torch.load(LOCAL_IMAGENET_WEIGHTS["mobilenetv2_100"](), weights_only=True))
    reference.eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = nn.functional.adaptive_avg_pool2d(reference.features(x), 1).flatten(1)
        torch.testing.assert_close(ours(x), expected, atol=1e-4, rtol=1e-4)


def test_offline_efficientnet_lite0_weights_recognise_a_photo():
    """The second backbone's mapped weights are real ImageNet weights: scikit-learn's photo of a Chinese
    palace gets an architecture class (palace / monastery / bell cote ...) as its top-1 ImageNet label."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    backbone = create_backbone("tf_efficientnet_lite0", "imagenet").eval()
    source = torch.load(LOCAL_IMAGENET_WEIGHTS["tf_efficientnet_lite0"](), weights_only=True)
    classifier = nn.Linear(backbone.num_features, 1000)
    classifier.load_state_dict({"weight": source["_fc.weight"], "bias": source["_fc.bias"]})
    photo = torch.from_numpy(sklearn_datasets.load_sample_image("china.jpg")).permute(2, 0, 1).float()[None] / 255
    x = (nn.functional.interpolate(photo, size=(224, 224), mode="bilinear", antialias=True) - 0.5) / 0.5
    with torch.no_grad():
        top = classifier(backbone(x)).argmax().item()
    palace, monastery, bell_cote, church, castle = 698, 663, 442, 497, 483
    assert top in {palace, monastery, bell_cote, church, castle}


def test_missing_weights_stop_with_a_message(tmp_path):
    with pytest.raises(LungCNNInputError, match="weights file not found"):
        create_backbone("mobilenetv2_100", "imagenet", weights_file=str(tmp_path / "none.pth"))
    with pytest.raises(LungCNNInputError, match="unknown timm model"):
        create_backbone("mobilenet_v9000")
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(3)}, bad)
    with pytest.raises(LungCNNInputError, match="not weights for this model"):
        create_backbone("mobilenetv2_100", "none", weights_file=str(bad))


def test_the_last_block_s_features_skip_the_imagenet_head():
    """model.features=blocks: the pooled output of the last block, the same tensor the whole network computes
    before its 1x1 head; backbones without such a head, and unknown settings, are refused with a message."""
    whole = create_backbone("mobilenetv2_100", "imagenet").eval()
    blocks = create_backbone("mobilenetv2_100", "imagenet", features="blocks").eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = whole.blocks(whole.bn1(whole.conv_stem(x))).mean((2, 3))
        torch.testing.assert_close(blocks(x), expected)
    assert blocks.num_features == 320 and whole.num_features == 1280
    with pytest.raises(LungCNNInputError, match="no 1x1 convolution"):
        create_backbone("resnet18", "none", features="blocks")
    with pytest.raises(LungCNNInputError, match="model.features"):
        create_backbone("mobilenetv2_100", "none", features="last")


def test_head_outputs_one_logit_or_k():
    x = torch.zeros(2, 3, 64, 64)
    assert LungNet(pretrained="none", outputs=1)(x).shape == (2,)
    assert LungNet(pretrained="none", outputs=3)(x).shape == (2, 3)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


class _Snapshots(L.Callback):
    def __init__(self) -> None:
        self.states: list[dict] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.states.append(_snapshot(pl_module.net))

    def on_train_end(self, trainer, pl_module) -> None:
        self.states.append(_snapshot(pl_module.net))


@pytest.mark.parametrize("train_bn_stats", [False, True])
def test_two_stage_freezing_is_exact(tiny_root, tmp_path, train_bn_stats):
    L.seed_everything(0)
    dm = LungCTDataModule(root=str(tiny_root), class_folders={"benign": "benign", "malignant": "malignant"},
                          class_names=["benign", "malignant"], image_size=64, batch_size=4)
    model = LungClassifier(["benign", "malignant"], pretrained="none", head_lr=1e-2, dropout=0.0,
                           preprocessing={})
    snapshots, top_n = _Snapshots(), 12
    trainer = L.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[TwoStageFinetune(stage1_epochs=1, unfreeze_top_n=top_n, train_bn_stats=train_bn_stats),
                                   snapshots])
    trainer.fit(model, datamodule=dm)
    start, after_stage1, end = snapshots.states
    head = {k for k in start if k.startswith("head.")}
    # Stage 1: the head changes, nothing of the backbone does (weights nor batch-norm statistics).
    assert _changed(start, after_stage1) == head
    # Stage 2: exactly the top layers (their weights, and BN running stats if asked) and the head.
    names = {id(m): n for n, m in model.net.backbone.named_modules()}
    top = [names[id(m)] for m in TwoStageFinetune.top_layers(model.net.backbone, top_n)]
    assert len(top) == top_n and len(conv_and_norm_layers(model.net.backbone)) == 104
    expected = {k for k in start if k.startswith("backbone.") and k.removeprefix("backbone.").rsplit(".", 1)[0] in top}
    if not train_bn_stats:
        expected = {k for k in expected if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert _changed(after_stage1, end) == head | expected
    # The optimizer holds the head's group and the unfrozen layers at the fine-tuning rate (head_lr / 10).
    assert [g["lr"] for g in trainer.optimizers[0].param_groups] == pytest.approx([1e-3, 1e-3])


def test_bad_finetune_settings():
    with pytest.raises(LungCNNInputError, match="unfreeze_top_n"):
        TwoStageFinetune(unfreeze_top_n=-1)
    with pytest.raises(LungCNNInputError, match="task"):
        LungClassifier(["a", "b", "c"], task="binary", pretrained="none")


def test_the_optimizer_is_configuration():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from lungcnn import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["model.head_lr=0.003", "model.weight_decay=0.02", "model.pretrained=none"])
    adamw = instantiate(cfg.model.optimizer)
    assert adamw.func is torch.optim.AdamW and adamw.keywords == {"lr": 0.003, "weight_decay": 0.02}
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["model.pretrained=none", "model.optimizer._target_=torch.optim.SGD",
                                          "+model.optimizer.momentum=0.9"])
    model = instantiate(cfg.model, class_names=["benign", "malignant"], _convert_="all")
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    assert "optimizer" not in model.hparams  # a partial would stop weights_only loading of the checkpoint
    with pytest.raises(LungCNNInputError, match="model.optimizer"):
        LungClassifier(["benign", "malignant"], pretrained="none", optimizer="adamw")
