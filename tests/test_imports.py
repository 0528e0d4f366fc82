"""What importing the localization stack loads: the modules that need neither Lightning nor torchmetrics
load no transformers. (Lightning imports torchmetrics, which imports transformers when it is installed,
so egolab.tasks.localization, egolab.data.localization and DetectionMAP cannot avoid it from egolab.)"""

import os

import pytest

TRANSFORMERS_FREE = [
    "egolab.metrics.localization",
    "egolab.models.actionformer",
    "egolab.models.actionformer_v2",
    "egolab.models.actionformer_checks",
    "egolab.models.actionformer_loss",
    "egolab.models.actionformer_postprocess",
    "egolab.models.actionformer_targets",
]


@pytest.mark.parametrize("module", TRANSFORMERS_FREE)
def test_localization_modules_load_no_transformers(module, modules_after):
    assert not modules_after(f"import {module}", dict(os.environ)) & {"transformers", "peft", "timm"}
