"""Compression of the classifier into the exact model that is deployed and calibrated against."""
