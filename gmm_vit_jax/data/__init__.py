"""Datasets read into uint8 image arrays and integer labels."""
