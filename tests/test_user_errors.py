"""Mistakes a user makes in a config or on a command line raise the project's UserError.

`cli.run` prints a UserError as one `error:` line; a plain ValueError would end in a
traceback. Each case calls the function that meets the mistake, without training.
"""

import ml_collections
import numpy as np
import pytest

from gmm_vit_jax import errors
from gmm_vit_jax.data import pipeline, validation
from gmm_vit_jax.training import init_from


def test_check_choice_names_the_field_the_value_and_the_choices():
  errors.check_choice('model.mask.kind', 'gmm', ('none', 'gmm'))
  with pytest.raises(
    errors.ConfigError,
    match=r"model.mask.kind='gauss' is not supported; choose one of "
    r"\('none', 'gmm'\).",
  ):
    errors.check_choice('model.mask.kind', 'gauss', ('none', 'gmm'))


def test_init_from_a_path_that_holds_no_weights(tmp_path):
  with pytest.raises(errors.UserError, match='init_from=.* is neither a run workdir'):
    init_from.read_source(str(tmp_path), ml_collections.ConfigDict())


def test_a_validation_split_that_holds_out_nothing():
  config = ml_collections.ConfigDict(dict(dataset=dict(validation=0.1), seed=0))
  with pytest.raises(errors.UserError, match='holds out no example'):
    pipeline._holdout(config, np.arange(10))  # One example of each of ten classes.
  with pytest.raises(errors.UserError, match='dataset.validation=1.5'):
    validation.check_fraction(1.5)
