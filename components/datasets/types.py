"""Re-export: the in-memory dataset types live in models/data.py (the bottom layer)."""
from models.data import SPLITS, FeatureDataset, Split, default_class_names

__all__ = ["SPLITS", "FeatureDataset", "Split", "default_class_names"]
