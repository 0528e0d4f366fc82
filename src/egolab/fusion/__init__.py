"""Late fusion of the predictions files of several runs of one task.

    python -m egolab.fusion OUTPUTS/expts/a.txt/0 OUTPUTS/expts/b.txt/0 --weights 2.5 0.5

`fuse_runs` (in `egolab.fusion.core`) reads each run's predictions file, combines them the way the task
calls for (classification: weighted score sum; anticipation: per verb / noun / action space, as the AVT
notebooks do; localization: pooled detections, then NMS; backpack: the AR and OSCC sections' weighted
scores), writes the fused file in the same format and
scores it with the task's own metric.
"""
