"""The ImageNet configs on tfds mock data: HAT-Net's published sizes, and a tiny model trained
through both pipelines on random 'imagenet2012' records of random sizes."""

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from configs import gmm_vit_imagenet, hatnet_imagenet
from gmm_vit_jax.models import build_from_config
from gmm_vit_jax.training import loop

pytestmark = pytest.mark.usefixtures('quick_compiles')

# The HAT-Net paper's parameter counts, in millions, at 224x224 and 1000 classes.
PUBLISHED_PARAMS = {'tiny': 12.7, 'small': 25.7, 'medium': 42.9, 'large': 63.1}


# medium and large take a minute each to build even as shapes; docs/datasets.md lists them.
@pytest.mark.parametrize('size', ['tiny', 'small'])
def test_hatnet_sizes_have_the_published_parameter_counts(size):
  model = nnx.eval_shape(lambda: build_from_config(hatnet_imagenet.get_config(size)))
  params = sum(np.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert round(params / 1e6, 1) == PUBLISHED_PARAMS[size]


def tiny_imagenet_config(pipeline: str):
  config = gmm_vit_imagenet.get_config()
  config.model.update(dict(patch_size=56, dim=16, depth=1, num_heads=2, head_dim=8, mlp_ratio=2))
  config.update(dict(batch_size=8, eval_batch_size=8, epochs=1, log_every_steps=1))
  config.schedule.warmup_epochs = 0
  config.dataset.update(dict(pipeline=pipeline, validation=None, grain_workers=0, grain_threads=2))
  config.augment.randaugment_ops = 0  # Its compilation at 224x224 would dominate the test.
  return config


@pytest.mark.parametrize('pipeline', ['grain', 'auto'])
def test_imagenet_config_trains_on_mock_data(tmp_path, pipeline):
  with tfds.testing.mock_data(num_examples=16):
    summary = loop.train_and_evaluate(tiny_imagenet_config(pipeline), str(tmp_path))
  assert summary['completed'] and summary['step'] == 2
  assert np.isfinite(summary['eval_loss'])
