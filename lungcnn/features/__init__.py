"""Cached backbone features (`cache.FeatureCache`) and training heads on them (`data.FeatureDataModule`)."""
