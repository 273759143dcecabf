"""The AutoAugment policies (Cubuk et al. 2019) the reference recipe uses, as data.

A policy is 25 sub-policies; a sub-policy is two steps (op, probability, level),
applied in order, each with its probability. A level 0-9 indexes the op's magnitude
in MAGNITUDES (10 evenly spaced values, as in the reference).
"""

import numpy as np

OP_NAMES = (
  'shear_x',
  'shear_y',
  'translate_x',
  'translate_y',
  'rotate',
  'color',
  'posterize',
  'solarize',
  'contrast',
  'sharpness',
  'brightness',
  'autocontrast',
  'equalize',
  'invert',
)

# Shear factor; translation as a fraction of the side (150 of 331 pixels in the
# paper); rotation in degrees; colour, contrast, sharpness and brightness as the
# distance of the enhancement factor from 1; bits kept; solarize threshold.
MAGNITUDES = {
  'shear_x': np.linspace(0.0, 0.3, 10),
  'shear_y': np.linspace(0.0, 0.3, 10),
  'translate_x': np.linspace(0.0, 150 / 331, 10),
  'translate_y': np.linspace(0.0, 150 / 331, 10),
  'rotate': np.linspace(0.0, 30.0, 10),
  'color': np.linspace(0.0, 0.9, 10),
  'posterize': np.round(np.linspace(8, 4, 10)),
  'solarize': np.linspace(256.0, 0.0, 10),
  'contrast': np.linspace(0.0, 0.9, 10),
  'sharpness': np.linspace(0.0, 0.9, 10),
  'brightness': np.linspace(0.0, 0.9, 10),
  'autocontrast': np.zeros(10),
  'equalize': np.zeros(10),
  'invert': np.zeros(10),
}

POLICIES = {
  'cifar10': (
    (('invert', 0.1, 7), ('contrast', 0.2, 6)),
    (('rotate', 0.7, 2), ('translate_x', 0.3, 9)),
    (('sharpness', 0.8, 1), ('sharpness', 0.9, 3)),
    (('shear_y', 0.5, 8), ('translate_y', 0.7, 9)),
    (('autocontrast', 0.5, 8), ('equalize', 0.9, 2)),
    (('shear_y', 0.2, 7), ('posterize', 0.3, 7)),
    (('color', 0.4, 3), ('brightness', 0.6, 7)),
    (('sharpness', 0.3, 9), ('brightness', 0.7, 9)),
    (('equalize', 0.6, 5), ('equalize', 0.5, 1)),
    (('contrast', 0.6, 7), ('sharpness', 0.6, 5)),
    (('color', 0.7, 7), ('translate_x', 0.5, 8)),
    (('equalize', 0.3, 7), ('autocontrast', 0.4, 8)),
    (('translate_y', 0.4, 3), ('sharpness', 0.2, 6)),
    (('brightness', 0.9, 6), ('color', 0.2, 8)),
    (('solarize', 0.5, 2), ('invert', 0.0, 3)),
    (('equalize', 0.2, 0), ('autocontrast', 0.6, 0)),
    (('equalize', 0.2, 8), ('equalize', 0.6, 4)),
    (('color', 0.9, 9), ('equalize', 0.6, 6)),
    (('autocontrast', 0.8, 4), ('solarize', 0.2, 8)),
    (('brightness', 0.1, 3), ('color', 0.7, 0)),
    (('solarize', 0.4, 5), ('autocontrast', 0.9, 3)),
    (('translate_y', 0.9, 9), ('translate_y', 0.7, 9)),
    (('autocontrast', 0.9, 2), ('solarize', 0.8, 3)),
    (('equalize', 0.8, 8), ('invert', 0.1, 3)),
    (('translate_y', 0.7, 9), ('autocontrast', 0.9, 1)),
  ),
  'svhn': (
    (('shear_x', 0.9, 4), ('invert', 0.2, 3)),
    (('shear_y', 0.9, 8), ('invert', 0.7, 5)),
    (('equalize', 0.6, 5), ('solarize', 0.6, 6)),
    (('invert', 0.9, 3), ('equalize', 0.6, 3)),
    (('equalize', 0.6, 1), ('rotate', 0.9, 3)),
    (('shear_x', 0.9, 4), ('autocontrast', 0.8, 3)),
    (('shear_y', 0.9, 8), ('invert', 0.4, 5)),
    (('shear_y', 0.9, 5), ('solarize', 0.2, 6)),
    (('invert', 0.9, 6), ('autocontrast', 0.8, 1)),
    (('equalize', 0.6, 3), ('rotate', 0.9, 3)),
    (('shear_x', 0.9, 4), ('solarize', 0.3, 3)),
    (('shear_y', 0.8, 8), ('invert', 0.7, 4)),
    (('equalize', 0.9, 5), ('translate_y', 0.6, 6)),
    (('invert', 0.9, 4), ('equalize', 0.6, 7)),
    (('contrast', 0.3, 3), ('rotate', 0.8, 4)),
    (('invert', 0.8, 5), ('translate_y', 0.0, 2)),
    (('shear_y', 0.7, 6), ('solarize', 0.4, 8)),
    (('invert', 0.6, 4), ('rotate', 0.8, 4)),
    (('shear_y', 0.3, 7), ('translate_x', 0.9, 3)),
    (('shear_x', 0.1, 6), ('invert', 0.6, 5)),
    (('solarize', 0.7, 2), ('translate_y', 0.6, 7)),
    (('shear_y', 0.8, 4), ('invert', 0.8, 8)),
    (('shear_x', 0.7, 9), ('translate_y', 0.8, 3)),
    (('shear_y', 0.8, 5), ('autocontrast', 0.7, 3)),
    (('shear_x', 0.7, 2), ('invert', 0.1, 5)),
  ),
  'imagenet': (
    (('posterize', 0.4, 8), ('rotate', 0.6, 9)),
    (('solarize', 0.6, 5), ('autocontrast', 0.6, 5)),
    (('equalize', 0.8, 8), ('equalize', 0.6, 3)),
    (('posterize', 0.6, 7), ('posterize', 0.6, 6)),
    (('equalize', 0.4, 7), ('solarize', 0.2, 4)),
    (('equalize', 0.4, 4), ('rotate', 0.8, 8)),
    (('solarize', 0.6, 3), ('equalize', 0.6, 7)),
    (('posterize', 0.8, 5), ('equalize', 1.0, 2)),
    (('rotate', 0.2, 3), ('solarize', 0.6, 8)),
    (('equalize', 0.6, 8), ('posterize', 0.4, 6)),
    (('rotate', 0.8, 8), ('color', 0.4, 0)),
    (('rotate', 0.4, 9), ('equalize', 0.6, 2)),
    (('equalize', 0.0, 7), ('equalize', 0.8, 8)),
    (('invert', 0.6, 4), ('equalize', 1.0, 8)),
    (('color', 0.6, 4), ('contrast', 1.0, 8)),
    (('rotate', 0.8, 8), ('color', 1.0, 2)),
    (('color', 0.8, 8), ('solarize', 0.8, 7)),
    (('sharpness', 0.4, 7), ('invert', 0.6, 8)),
    (('shear_x', 0.6, 5), ('equalize', 1.0, 9)),
    (('color', 0.4, 0), ('equalize', 0.6, 3)),
    (('equalize', 0.4, 7), ('solarize', 0.2, 4)),
    (('solarize', 0.6, 5), ('autocontrast', 0.6, 5)),
    (('invert', 0.6, 4), ('equalize', 1.0, 8)),
    (('color', 0.6, 4), ('contrast', 1.0, 8)),
    (('equalize', 0.8, 8), ('equalize', 0.6, 3)),
  ),
}


def policy_tables(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(25, 2) op indices into OP_NAMES, (25, 2) probabilities, (25, 2) magnitudes."""
  steps = POLICIES[name]
  ops = np.array([[OP_NAMES.index(op) for op, _, _ in sub] for sub in steps], np.int32)
  probs = np.array([[p for _, p, _ in sub] for sub in steps], np.float32)
  mags = np.array([[MAGNITUDES[op][level] for op, _, level in sub] for sub in steps], np.float32)
  return ops, probs, mags
