"""Datasets: the facts a model and its preprocessing need (info), and their loading."""
