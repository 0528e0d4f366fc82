"""Datasets, collation and Lightning data modules (feature readers, localization data, demo data)."""
