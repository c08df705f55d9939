"""SimSID (Xiang et al., TPAMI 2024) as a cxrad method: docs/simsid.md."""
