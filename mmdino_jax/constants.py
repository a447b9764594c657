"""Names shared by the model, the data pipeline and evaluation."""

# Canonical MRI sequences; the learned sequence embedding has one row per entry, in this order.
SEQUENCES = ("t1", "t1c", "t2", "flair")
# WHO 2021 glioma subtypes; a label is the index into this tuple, -1 means unlabeled.
CLASS_NAMES = ("astrocytoma", "glioblastoma", "oligodendroglioma")
UNLABELED = -1
# Segmentation labels of the prepared cache (BraTS 2021) and the regions scored: name -> (labels, title).
SEG_LABELS = (0, 1, 2, 4)
BRATS_REGIONS = {"wt": ((1, 2, 4), "whole tumour"), "tc": ((1, 4), "tumour core"), "et": ((4,), "enhancing tumour")}


def sequence_indices(names) -> tuple[int, ...]:
    """Canonical indices of sequence names, e.g. ("t2", "flair") -> (2, 3)."""
    names = tuple(names.split(",")) if isinstance(names, str) else tuple(names)
    unknown = [n for n in names if n not in SEQUENCES]
    if unknown:
        raise ValueError(f"unknown MRI sequence(s) {unknown}; choose from {','.join(SEQUENCES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"MRI sequences listed twice in {','.join(names)}")
    return tuple(SEQUENCES.index(n) for n in names)
