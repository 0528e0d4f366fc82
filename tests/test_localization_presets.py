"""Each released ActionFormer recipe, as composed from its experiment file, has the release's key values.

The table is the release's ``configs/<name>.yaml`` over its ``libs/core/config.py`` defaults
(happyharrycn/actionformer_release), written out by hand: model, features, loader, optimizer (the
release trains ``epochs + warmup_epochs`` epochs), loss and inference settings. A preset that inherits a
base value the release overrides (as Ego4D's ``n_head`` did) builds without error, so only a table
catches it.
"""

import pytest
from omegaconf import OmegaConf

from egolab.launch.txtfile import compose_experiment
from egolab.paths import REPO_ROOT

DEFAULT_RANGES = [[0, 4], [4, 8], [8, 16], [16, 32], [32, 64], [64, 10000]]
EPIC_RANGES = [[0, 4], [2, 8], [4, 16], [8, 32], [16, 64], [32, 10000]]
EGO4D_RANGES = [[0, 4], [2, 8], [4, 16], [8, 32], [16, 64], [32, 128], [64, 256], [128, 10000]]
EPIC = {
    "model.input_dim": 2304,
    "model.max_seq_len": 2304,
    "model.n_head": 4,
    "model.n_mha_win_size": 9,
    "model.backbone_arch": [2, 2, 5],
    "model.regression_range": EPIC_RANGES,
    "model.embd_dim": 512,
    "model.fpn_dim": 512,
    "model.head_dim": 512,
    "model.fpn_type": "identity",
    "model.max_buffer_len_factor": 4.0,
    "model.use_abs_pe": False,
    "model.dropout": 0.0,
    "model.droppath": 0.1,
    "data.dataset.feat_stride": 16,
    "data.dataset.num_frames": 32,
    "data.dataset.default_fps": 30,
    "data.dataset.trunc_thresh": 0.3,
    "data.dataset.crop_ratio": [0.9, 1.0],
    "data.batch_size": 2,
    "task.optimizer.lr": 1e-4,
    "task.weight_decay": 0.05,
    "trainer.max_epochs": 16 + 5,
    "trainer.gradient_clip_val": 1.0,
    "task.criterion.init_loss_norm": 250,
    "task.criterion.loss_weight": 1.0,
    "task.postprocess.pre_nms_topk": 5000,
    "task.postprocess.max_seg_num": 2000,
    "task.postprocess.min_score": 0.001,
    "task.postprocess.nms_sigma": 0.4,
    "task.postprocess.multiclass_nms": True,
    "task.postprocess.voting_thresh": 0.75,
    "task.postprocess.duration_thresh": 0.05,
}
RELEASED = {
    "thumos_i3d.txt": {
        "model.input_dim": 2048,
        "model.num_classes": 20,
        "model.max_seq_len": 2304,
        "model.n_head": 4,
        "model.n_mha_win_size": 19,
        "model.backbone_arch": [2, 2, 5],
        "model.regression_range": DEFAULT_RANGES,
        "model.embd_dim": 512,
        "model.fpn_dim": 512,
        "model.head_dim": 512,
        "model.fpn_type": "identity",
        "model.max_buffer_len_factor": 6.0,
        "model.use_abs_pe": False,
        "model.dropout": 0.0,
        "model.droppath": 0.1,
        "data.dataset.feat_stride": 4,
        "data.dataset.num_frames": 16,
        "data.dataset.trunc_thresh": 0.5,
        "data.dataset.crop_ratio": [0.9, 1.0],
        "data.batch_size": 2,
        "task.optimizer.lr": 1e-4,
        "task.weight_decay": 0.05,
        "trainer.max_epochs": 30 + 5,
        "trainer.gradient_clip_val": 1.0,
        "task.criterion.init_loss_norm": 100,
        "task.criterion.center_sample_radius": 1.5,
        "task.postprocess.voting_thresh": 0.7,
        "task.postprocess.pre_nms_topk": 2000,
        "task.postprocess.max_seg_num": 200,
        "task.postprocess.min_score": 0.001,
        "task.postprocess.nms_sigma": 0.5,
        "task.postprocess.multiclass_nms": True,
        "recipe.world_size": 1,
        "recipe.batch_size": 2,
    },
    "anet_tsp_classifier.txt": {
        "model.input_dim": 512,
        "model.num_classes": 1,
        "model.max_seq_len": 192,
        "model.n_head": 4,
        "model.n_mha_win_size": [7, 7, 7, 7, 7, -1],
        "model.backbone_arch": [2, 2, 5],
        "model.regression_range": DEFAULT_RANGES,
        "model.embd_dim": 256,
        "model.fpn_dim": 256,
        "model.head_dim": 256,
        "model.fpn_type": "identity",
        "model.max_buffer_len_factor": 1.0,
        "model.use_abs_pe": True,
        "model.droppath": 0.1,
        "data.dataset.feat_stride": 16,
        "data.dataset.num_frames": 16,
        "data.dataset.default_fps": 15,
        "data.dataset.trunc_thresh": 0.5,
        "data.dataset.crop_ratio": [0.9, 1.0],
        "data.dataset.force_upsampling": True,
        "data.batch_size": 16,
        "task.optimizer.lr": 1e-3,
        "task.weight_decay": 0.05,
        "trainer.max_epochs": 10 + 5,
        "trainer.gradient_clip_val": 1.0,
        "task.criterion.init_loss_norm": 200,
        "task.criterion.label_smoothing": 0.1,
        "task.criterion.loss_weight": 2.0,
        "task.postprocess.voting_thresh": 0.9,
        "task.postprocess.pre_nms_topk": 2000,
        "task.postprocess.max_seg_num": 100,
        "task.postprocess.min_score": 0.001,
        "task.postprocess.multiclass_nms": False,
        "task.postprocess.nms_sigma": 0.75,
        "task.postprocess.duration_thresh": 0.001,
        "recipe.world_size": 1,
        "recipe.batch_size": 16,
    },
    "epic_verb.txt": {**EPIC, "model.num_classes": 97, "task.criterion.label_smoothing": 0.0},
    "epic_noun.txt": {**EPIC, "model.num_classes": 300, "task.criterion.label_smoothing": 0.1},
    "ego4d_mq.txt": {
        "model.input_dim": [2304, 1536, 256],
        "model.proj_dims": [256, 384, 384],  # the release's list embd_dim, summed to 1024 after it
        "model.num_classes": 110,
        "model.max_seq_len": 1024,
        "model.n_head": 16,
        "model.n_mha_win_size": 9,
        "model.backbone_arch": [2, 2, 7],
        "model.regression_range": EGO4D_RANGES,
        "model.embd_dim": 1024,
        "model.fpn_dim": 1024,
        "model.head_dim": 1024,
        "model.fpn_type": "identity",
        "model.max_buffer_len_factor": 4.0,
        "model.use_abs_pe": True,
        "model.dropout": 0.1,
        "model.droppath": 0.1,
        "data.dataset.feat_stride": 16,
        "data.dataset.num_frames": 32,
        "data.dataset.default_fps": 30,
        "data.dataset.trunc_thresh": 0.3,
        "data.dataset.crop_ratio": [0.9, 1.0],
        "data.batch_size": 2,
        "task.optimizer.lr": 1e-4,
        "task.weight_decay": 0.05,
        "trainer.max_epochs": 10 + 5,
        "trainer.gradient_clip_val": 1.0,
        "task.criterion.init_loss_norm": 100,
        "task.postprocess.pre_nms_topk": 5000,
        "task.postprocess.max_seg_num": 2000,
        "task.postprocess.min_score": 0.001,
        "task.postprocess.nms_sigma": 0.9,
        "task.postprocess.multiclass_nms": True,
        "task.postprocess.voting_thresh": 0.95,
        "recipe.world_size": 1,
        "recipe.batch_size": 2,
    },
}


@pytest.mark.parametrize("txt", sorted(RELEASED))
def test_released_recipe_values(txt):
    cfg = compose_experiment(REPO_ROOT / "expts" / "localization" / txt, ["paths.root=/nonexistent"])
    ours = {
        key: OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(cfg, key)}))["v"]
        for key in RELEASED[txt]
    }
    wrong = {key: (ours[key], value) for key, value in RELEASED[txt].items() if ours[key] != value}
    assert not wrong, f"{txt}: (ours, released) {wrong}"
