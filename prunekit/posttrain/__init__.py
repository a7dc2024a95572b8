"""Post-training pruning (Kwon et al. 2022): Fisher mask search under a MACs or latency budget, mask
rearrangement and least-squares mask tuning; no retraining.

  fisher.py     per-batch gradients of head / FFN-unit masks, diagonal Fisher
  search.py     exact mask search under a MACs or a (fitted) latency budget
  rearrange.py  which units to keep within each layer, from the block Fisher
  tune.py       real-valued mask scales by layer-wise least squares
  stages.py     the stages as functions of each other's results
  report.py     report.json's post-training fields
  pipeline.py   PostTrainConfig and compress(): `prunekit compress --method post-training`
"""
from .pipeline import METHOD, PostTrainConfig, compress

__all__ = ["METHOD", "PostTrainConfig", "compress"]
