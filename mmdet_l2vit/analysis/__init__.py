"""Analysis helpers: complexity counting, benchmarks and attention studies.

Attention studies (``tools/analysis/``): :mod:`.attention` (capture of the
reference attention modules' rows and of L²ViT global blocks' effective
maps), :mod:`.attention_metrics` (entropy, local shares, collisions),
:mod:`.attention_report` (per-layer statistics over images), :mod:`.erf`
(effective receptive fields of any backbone), :mod:`.loading` (backbones
and images for the tools), :mod:`.plots` (their figures).
"""
