"""Mapping tables between reference PyTorch state_dicts and the Flax models' variables.

A backbone's mapping is a list of rules. Each rule ties one or more Flax variables
(flat names, as `gmm_vit_jax.export.flat_variables` gives them) to one or more torch
state_dict keys, with a NumPy function for each direction. Constants are torch
entries that the Flax model does not store (buffers fixed by the config): checked
when importing, written when exporting.
"""

import dataclasses
from collections.abc import Callable

import numpy as np

from gmm_vit_jax.errors import ConfigError
from gmm_vit_jax.export import check_names

ArrayFn = Callable[..., tuple[np.ndarray, ...]]


@dataclasses.dataclass(frozen=True)
class Rule:
  flax: tuple[str, ...]
  torch: tuple[str, ...]
  to_flax: ArrayFn
  to_torch: ArrayFn


@dataclasses.dataclass(frozen=True)
class Mapping:
  rules: tuple[Rule, ...]
  constants: dict[str, np.ndarray]

  def torch_keys(self) -> list[str]:
    return [k for rule in self.rules for k in rule.torch] + list(self.constants)

  def flax_names(self) -> list[str]:
    return [k for rule in self.rules for k in rule.flax]


def copy(flax: str, torch: str) -> Rule:
  return Rule((flax,), (torch,), lambda a: (a,), lambda a: (a,))


def expand(flax: str, torch: str, axes: tuple[int, ...]) -> Rule:
  """The torch array is the Flax one with unit `axes` added, e.g. (N, D) <-> (1, N, D)."""
  return Rule(
    (flax,), (torch,), lambda a: (np.squeeze(a, axes),), lambda a: (np.expand_dims(a, axes),)
  )


def linear(flax: str, torch: str, bias: bool = True) -> list[Rule]:
  """nnx.Linear kernel (in, out) <-> torch.nn.Linear weight (out, in), and the bias."""
  rules = [Rule((f'{flax}.kernel',), (f'{torch}.weight',), lambda w: (w.T,), lambda k: (k.T,))]
  if bias:
    rules.append(copy(f'{flax}.bias', f'{torch}.bias'))
  return rules


def layer_norm(flax: str, torch: str) -> list[Rule]:
  return [copy(f'{flax}.scale', f'{torch}.weight'), copy(f'{flax}.bias', f'{torch}.bias')]


def fused_linear(flax_kernels: tuple[str, ...], torch_weight: str) -> Rule:
  """One torch weight (n * out, in) stacking n Linears <-> n Flax kernels (in, out)."""
  return Rule(
    flax_kernels,
    (torch_weight,),
    lambda w: tuple(part.T for part in np.split(w, len(flax_kernels), axis=0)),
    lambda *kernels: (np.concatenate([k.T for k in kernels], axis=0),),
  )


def fused_bias(flax_biases: tuple[str, ...], torch_bias: str) -> Rule:
  """One torch bias (n * out,) stacking n Linears' biases <-> n Flax biases (out,)."""
  return Rule(
    flax_biases,
    (torch_bias,),
    lambda b: tuple(np.split(b, len(flax_biases))),
    lambda *biases: (np.concatenate(biases),),
  )


def conv2d(flax: str, torch: str) -> list[Rule]:
  """nnx.Conv kernel (kh, kw, in, out) <-> torch Conv2d weight (out, in, kh, kw), and bias."""
  return [
    Rule(
      (f'{flax}.kernel',),
      (f'{torch}.weight',),
      lambda w: (w.transpose(2, 3, 1, 0),),
      lambda k: (k.transpose(3, 2, 0, 1),),
    ),
    copy(f'{flax}.bias', f'{torch}.bias'),
  ]


def _apply(rule: Rule, inputs: tuple[np.ndarray, ...], to_flax: bool) -> tuple[np.ndarray, ...]:
  source, target = (rule.torch, rule.flax) if to_flax else (rule.flax, rule.torch)
  try:
    return (rule.to_flax if to_flax else rule.to_torch)(*inputs)
  except ValueError as e:
    shapes = [a.shape for a in inputs]
    raise ConfigError(
      f'cannot convert {list(source)} of shapes {shapes} to {list(target)}: {e}'
    ) from e


def to_flax(
  mapping: Mapping,
  state_dict: dict[str, np.ndarray],
  flax_shapes: dict[str, tuple[int, ...]] | None,
) -> dict[str, np.ndarray]:
  """torch {key: array} -> Flax {flat name: array}, checked against the model's shapes.

  flax_shapes None: no check of the shapes or the constants, for weights that a model of
  another class count or token grid will adapt (gmm_vit_jax/training/init_from.py).
  """
  check_names('torch state_dict keys', state_dict, mapping.torch_keys())
  if flax_shapes is not None:
    check_names('mapped variables', mapping.flax_names(), flax_shapes)
  for key, value in (mapping.constants if flax_shapes is not None else {}).items():
    given = state_dict[key]
    if given.shape != value.shape or not np.allclose(given, value, rtol=0, atol=1e-6):
      raise ConfigError(
        f'torch {key!r} (shape {given.shape}) is not the constant the config '
        f'implies (shape {value.shape}): was it trained with another patch '
        'or image size?'
      )
  out = {}
  for rule in mapping.rules:
    arrays = _apply(rule, tuple(state_dict[k] for k in rule.torch), to_flax=True)
    for name, array in zip(rule.flax, arrays):
      if flax_shapes is not None and array.shape != tuple(flax_shapes[name]):
        raise ConfigError(
          f'torch {list(rule.torch)} gives {name!r} shape {array.shape}; '
          f"the config's model has {tuple(flax_shapes[name])}."
        )
      out[name] = array
  return out


def to_torch(mapping: Mapping, variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Flax {flat name: array} -> torch {key: array}, constants included."""
  check_names('variables', variables, mapping.flax_names())
  out = dict(mapping.constants)
  for rule in mapping.rules:
    out.update(zip(rule.torch, _apply(rule, tuple(variables[k] for k in rule.flax), to_flax=False)))
  return out
