"""Parameter and multiply-accumulate counts of a config's model, as a table (by default),
Markdown (--markdown) or one JSON object per config (--json).

    python -m gmm_vit_jax.complexity --config=configs/gmm_vit_cifar10.py
    python -m gmm_vit_jax.complexity --config=configs/a.py --config=configs/b.py --markdown
    python -m gmm_vit_jax.complexity --config=configs/gmm_vit_cifar10.py --json

MACs are counted on the traced forward pass of one image, from every matrix product
and convolution in it:
- paper-style: products of an activation with weights (Linear and Conv layers), as
  ptflops counted them for the published table; the q.k^T and attention.v products
  are left out, so a logit mask adds nothing;
- full: every product that involves the image, the attention products included.
A product is "with weights" when one operand depends on the image and the other does not.
Depth is the number of attention layers.
"""

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags
from flax import nnx
from jax.extend import core as jex_core

from gmm_vit_jax import cli, config_files, console, platforms
from gmm_vit_jax.attention import Attention
from gmm_vit_jax.data.info import dataset_info
from gmm_vit_jax.models import build_model

FLAGS = flags.FLAGS


def _product_macs(eqn) -> int:
  """Multiply-accumulates of one dot_general or conv_general_dilated equation."""
  out = math.prod(eqn.outvars[0].aval.shape)
  if eqn.primitive.name == 'dot_general':
    (lhs_contract, _), _ = eqn.params['dimension_numbers']
    lhs_shape = eqn.invars[0].aval.shape
    return out * math.prod(lhs_shape[d] for d in lhs_contract)
  rhs_shape = eqn.invars[1].aval.shape
  spec = eqn.params['dimension_numbers'].rhs_spec  # (out feature, in feature, spatial...)
  return out * rhs_shape[spec[1]] * math.prod(rhs_shape[d] for d in spec[2:])


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jex_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jex_core.Jaxpr):
        yield item


def _count(jaxpr, dependent: list[bool], totals: dict) -> list[bool]:
  """Walks `jaxpr` with per-input flags "depends on the image"; returns the output flags."""
  flags_of = {}
  read = lambda v: flags_of.get(v, False) if isinstance(v, jex_core.Var) else False
  for var, dep in zip(jaxpr.invars, dependent):
    flags_of[var] = dep
  for eqn in jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    subs = list(_sub_jaxprs(eqn))
    if eqn.primitive.name in ('dot_general', 'conv_general_dilated'):
      macs = _product_macs(eqn)
      if ins[0] and ins[1]:
        totals['attention'] += macs
      elif ins[0] or ins[1]:
        totals['weights'] += macs
      outs = [ins[0] or ins[1]]
    elif subs and len(subs[0].invars) == len(ins):
      outs = _count(subs[0], ins, totals)
    else:
      outs = [any(ins)] * len(eqn.outvars)
    for var, dep in zip(eqn.outvars, outs):
      flags_of[var] = dep
  return [read(v) for v in jaxpr.outvars]


def model_complexity(config: ml_collections.ConfigDict) -> dict:
  """Counts for config.model on one image of config.dataset."""
  info = dataset_info(config.dataset)
  model_config = config.model.copy_and_resolve_references()
  # The materialised core: 'blockwise' loops over batch slices, whose one traced body
  # the walk below would count once.
  model_config.attention.implementation = 'xla'
  # Shapes only: counting needs no weight values, and drawing them is slow.
  model = nnx.eval_shape(
    lambda: build_model(
      model_config,
      num_classes=info['num_classes'],
      image_size=info['image_size'],
      channels=info['channels'],
      rngs=nnx.Rngs(0),
    )
  )
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  image = jnp.zeros((1, info['image_size'], info['image_size'], info['channels']), jnp.float32)
  # Traced as for an accelerator, where the layers take the library's forms: on a CPU,
  # DepthwiseConv computes as shifted slices (elementwise products the counter cannot tell
  # from a norm's scale) and LayerNorm's means are products with a ones vector
  # (cpu_forms.py), neither counted the way ptflops counts the paper's layers.
  with platforms.lowering_for('tpu'):
    closed = jax.make_jaxpr(lambda p, r, x: nnx.merge(graphdef, p, r)(x))(params, rest, image)
  num_state = len(jax.tree.leaves((params, rest)))
  totals = {'weights': 0, 'attention': 0}
  _count(closed.jaxpr, [False] * num_state + [True], totals)
  return dict(
    model=config.model.name,
    mask=config.model.mask.kind,
    params=sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
    macs_paper=totals['weights'],
    macs_full=totals['weights'] + totals['attention'],
    depth=sum(isinstance(m, Attention) for _, m in nnx.iter_graph(model)),
  )


def markdown_table(rows: list[dict]) -> str:
  lines = [
    '| config | params | MACs (paper-style) | MACs (full) | depth |',
    '|---|---:|---:|---:|---:|',
  ]
  for r in rows:
    lines.append(
      f'| {r["config"]} | {r["params"]:,} | {r["macs_paper"] / 1e6:.1f}M | '
      f'{r["macs_full"] / 1e6:.1f}M | {r["depth"]} |'
    )
  return '\n'.join(lines)


def text_table(rows: list[dict]) -> str:
  """The rows as aligned columns, for a terminal."""
  header = ('config', 'params', 'MACs (paper-style)', 'MACs (full)', 'depth')
  body = [
    (
      r['config'],
      f'{r["params"]:,}',
      f'{r["macs_paper"] / 1e6:.1f}M',
      f'{r["macs_full"] / 1e6:.1f}M',
      str(r['depth']),
    )
    for r in rows
  ]
  widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
  return '\n'.join(
    '  '.join(
      cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))
    ).rstrip()
    for line in [header] + body
  )


def main(argv):
  del argv
  console.quiet_jax()
  rows = []
  for path in FLAGS.config:
    config = config_files.load(path)
    rows.append(dict(config=path.split('/')[-1], **model_complexity(config)))
  if FLAGS.json:
    for r in rows:
      print(json.dumps(r))
  elif FLAGS.markdown:
    print(markdown_table(rows))
  else:
    print(text_table(rows))


if __name__ == '__main__':
  flags.DEFINE_multi_string('config', None, 'Config file(s), optionally with :argument.')
  flags.DEFINE_bool('json', False, 'Print one JSON object per config instead of a table.')
  flags.DEFINE_bool('markdown', False, 'Print a Markdown table (as in README).')
  flags.mark_flags_as_required(['config'])
  cli.run_app(main)
