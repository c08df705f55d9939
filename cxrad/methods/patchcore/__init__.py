"""PatchCore (Roth et al., "Towards total recall in industrial anomaly detection", CVPR 2022):
a coreset of ImageNet patch features of normal images; a patch's anomaly score is its distance to
the nearest memory-bank feature (docs/patchcore.md)."""
