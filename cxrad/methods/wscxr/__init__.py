"""WSCXR (Ni et al., 2023): weakly supervised chest X-ray anomaly detection from normal images plus
a few images labelled abnormal. docs/wscxr.md describes the method and what cxrad runs."""
