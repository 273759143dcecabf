"""A one-layer GMM-ViT on digits for the trainer's subprocess tests."""

from tests import test_training


def get_config():
  return test_training.tiny_config()
