"""Datasets: their facts (info), where the pixels come from (sources), device residency (device)."""
