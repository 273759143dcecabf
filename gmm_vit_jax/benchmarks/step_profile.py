"""Where a training step's time goes, by op class: the Flax model against its PyTorch twin.

    python -m gmm_vit_jax.benchmarks.step_profile --config=configs/gmm_vit_cifar10.py \
        [--batch_size=128] [--steps=2] [--top=6] [--json]

Each side runs in a process of its own (`--side=jax`, `--side=torch`), one after the
other, on the CPU, with the training step of benchmarks/torch_compare.py (forward,
backward, AdamW, label-smoothed cross entropy, no augmentation) and a profiler over
`steps` steps after a warm-up:
- JAX: `jax.profiler`'s trace of the compiled step. XLA:CPU records one event per
  operation it runs (a fusion, a product, a copy), named as in the compiled HLO, which
  says what the operation is (`hlo_classes`).
- PyTorch: `torch.profiler`, each operator's self time, outside any operator it calls.
The classes: dense products (unbatched dots and convolutions: the layers' weights),
batched products (the attention's q.k and weights.v per head), elementwise and
reductions (softmax, masks, norms, GELU, losses, bias gradients), copies and
transposes, the optimizer update (everything optax or torch.optim runs), and the rest
of the step's time: XLA's runtime between operations, PyTorch's autograd and Python.
Shares are of the step's time, or of the operations' total where XLA ran operations
side by side and they add up to more. Profiling adds its own cost to both sides: the
shares, not the times, are the result. It also names the CPU (model, cores, vector
extensions) and the load average when it ran.
"""

import collections
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile

from absl import flags
from ml_collections import config_flags

from gmm_vit_jax import cli
from gmm_vit_jax.benchmarks.cpu_info import cpu_description

FLAGS = flags.FLAGS

DENSE, BATCHED, ELEMENTWISE, COPIES, OPTIMIZER, REST = (
  'dense products',
  'batched products',
  'elementwise and reductions',
  'copies and transposes',
  'optimizer update',
  'runtime between ops',
)
CLASSES = (DENSE, BATCHED, ELEMENTWISE, COPIES, OPTIMIZER, REST)

# HLO operations that only move data: a fusion of these alone is a copy.
MOVES = {
  'copy',
  'transpose',
  'bitcast',
  'reshape',
  'parameter',
  'constant',
  'slice',
  'dynamic-slice',
  'dynamic-update-slice',
  'concatenate',
  'pad',
  'broadcast',
  'tuple',
  'get-tuple-element',
  'reverse',
  'gather',
  'copy-start',
  'copy-done',
}
# Operations whose events enclose those of the computations they run.
CONTAINERS = {'while', 'conditional', 'call', 'async-start', 'async-done'}
COMPUTATION = re.compile(r'^(?:ENTRY )?%(\S+) .*\{$')
INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%(\S+) = .*? ([a-z][a-z0-9-]*)\(')
CALLED = re.compile(r'(?:calls|to_apply|body|condition|branch_computations)=\{?%([^\s,}]+)')
STACK_FRAME = re.compile(r'stack_frame_id=(\d+)')
OP_NAME = re.compile(r'op_name="([^"]*)"')
TARGET = re.compile(r'custom_call_target="([^"]*)"')
# Custom calls to a library's products (oneDNN's, where XLA:CPU is told to use it).
PRODUCT_CALL = re.compile(r'matmul|conv|gemm|dot', re.IGNORECASE)

TORCH_DENSE = {
  'aten::mm',
  'aten::addmm',
  'aten::convolution',
  'aten::_convolution',
  'aten::mkldnn_convolution',
  'aten::convolution_backward',
  'aten::linear',
  'aten::_mkldnn_convolution',
}
TORCH_BATCHED = {'aten::bmm', 'aten::baddbmm'}
TORCH_COPIES = {
  'aten::copy_',
  'aten::clone',
  'aten::contiguous',
  'aten::cat',
  'aten::stack',
  'aten::_to_copy',
  'aten::to',
  'aten::roll',
  'aten::index',
  'aten::pad',
  'aten::constant_pad_nd',
  'aten::unfold',
  'aten::im2col',
  'aten::col2im',
  'aten::index_put_',
  'aten::narrow_copy',
}


def parse_hlo(text: str) -> dict[str, dict]:
  """Compiled HLO text -> {instruction name: its opcode, computation, calls, metadata}.

  A custom call to a library's matrix product or convolution gets the opcode 'dot'.

  Also returns, under the key '', the stack-frame table: {frame id: (file, parent id)}.
  """
  files, locations, frames = {}, {}, {}
  table = None
  for line in text.splitlines():
    if line in ('FileNames', 'FunctionNames', 'FileLocations', 'StackFrames'):
      table = line
    elif table and line[:1].isdigit():
      key, _, value = line.partition(' ')
      if table == 'FileNames':
        files[key] = value.strip('"')
      elif table == 'FileLocations':
        locations[key] = re.search(r'file_name_id=(\d+)', value).group(1)
      elif table == 'StackFrames':
        location, parent = re.findall(r'=(\d+)', value)[:2]
        frames[key] = (files.get(locations.get(location, ''), ''), parent)
    else:
      table = None
  ops, computation = {}, None
  for line in text.splitlines():
    header = COMPUTATION.match(line)
    if header:
      computation = header.group(1)
      continue
    found = INSTRUCTION.match(line)
    if found and computation:
      frame = STACK_FRAME.search(line)
      op_name = OP_NAME.search(line)
      target = TARGET.search(line)
      opcode = found.group(2)
      if opcode == 'custom-call' and target and PRODUCT_CALL.search(target.group(1)):
        opcode = 'dot'
      ops[found.group(1)] = dict(
        opcode=opcode,
        computation=computation,
        calls=CALLED.findall(line),
        batched='lhs_batch_dims=' in line,
        frame=frame.group(1) if frame else None,
        op_name=op_name.group(1) if op_name else '',
      )
  return {'': frames, **ops}


def frame_files(frames: dict, frame: str | None) -> list[str]:
  """The source files of a stack frame and its callers, innermost first."""
  seen, out = set(), []
  while frame and frame in frames and frame not in seen:
    seen.add(frame)
    path, parent = frames[frame]
    out.append(path)
    frame = parent if parent != frame else None
  return out


def hlo_classes(ops: dict[str, dict]) -> dict[str, str]:
  """{name of each operation XLA runs as one event: its class}; containers are left out."""
  frames = ops['']
  by_computation = collections.defaultdict(list)
  for name, op in ops.items():
    if name:
      by_computation[op['computation']].append(op)

  def inner(op, depth=0):
    """The op and every op of the computations a fusion runs, recursively."""
    found = [op]
    if op['opcode'] == 'fusion' and depth < 8:
      for called in op['calls']:
        for child in by_computation.get(called, []):
          found += inner(child, depth + 1)
    return found

  fused = {called for op in ops.values() if op.get('opcode') == 'fusion' for called in op['calls']}
  classes = {}
  for name, op in ops.items():
    if not name or op['computation'] in fused or op['opcode'] in CONTAINERS:
      continue
    members = inner(op)
    dots = [m for m in members if m['opcode'] in ('dot', 'convolution')]
    if dots:
      classes[name] = BATCHED if any(m['batched'] for m in dots) else DENSE
      continue
    if any(
      '/optax/' in path and '/optax/losses/' not in path
      for m in members
      for path in frame_files(frames, m['frame'])
    ):
      classes[name] = OPTIMIZER
    elif all(m['opcode'] in MOVES for m in members):
      classes[name] = COPIES
    else:
      classes[name] = ELEMENTWISE
  return classes


def trace_durations(log_dir: str) -> dict[str, float]:
  """{event name: total microseconds} over every thread of a jax.profiler perfetto trace."""
  path = sorted(glob.glob(os.path.join(log_dir, '**', 'perfetto_trace.json.gz'), recursive=True))[
    -1
  ]
  with gzip.open(path, 'rt', encoding='utf-8') as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  totals = collections.Counter()
  for event in events:
    if event.get('ph') == 'X':
      totals[event['name']] += event.get('dur', 0.0)
  return totals


def summary(
  class_us: dict[str, float],
  step_us: float,
  steps: int,
  per_op: list[tuple[str, str, float]],
  top: int,
) -> dict:
  """Per-class ms per step and shares, and the `top` costliest operations of each class.

  per_op: (name, class, microseconds) of each operation over all profiled steps. The
  step time not covered by operations is REST.
  """
  measured = sum(class_us.values())
  class_us = dict(class_us)
  class_us[REST] = max(0.0, step_us - measured)
  whole = max(step_us, measured)
  ranked = sorted(per_op, key=lambda row: -row[2])
  return dict(
    step_ms=step_us / steps / 1e3,
    classes={
      c: dict(ms=class_us.get(c, 0.0) / steps / 1e3, share=class_us.get(c, 0.0) / whole)
      for c in CLASSES
    },
    top=[
      dict(name=n, cls=c, ms=us / steps / 1e3)
      for cls in CLASSES
      for n, c, us in [r for r in ranked if r[1] == cls][:top]
    ],
  )


def jax_side(config, batch_size: int, steps: int, top: int) -> dict:
  """Profiles the trainer's compiled step (no augmentation) in this process."""
  from gmm_vit_jax import cpu_runtime

  cpu_runtime.apply(config)
  import jax

  from gmm_vit_jax import sharding
  from gmm_vit_jax.benchmarks.speed import NO_AUGMENTATION, random_dataset
  from gmm_vit_jax.data.info import dataset_info
  from gmm_vit_jax.data.sampling import EpochSampler
  from gmm_vit_jax.training.optimizer import make_optimizer
  from gmm_vit_jax.training.state import Metrics, create_train_state
  from gmm_vit_jax.training.step import make_train_step

  config = config.copy_and_resolve_references()
  config.batch_size = batch_size
  config.augment.update(NO_AUGMENTATION)
  info = dataset_info(config.dataset)
  mesh = sharding.make_mesh()
  images, labels = random_dataset(config, 2 * batch_size, mesh)
  tx = make_optimizer(config, steps_per_epoch=1000)
  graphdef, state = create_train_state(config, tx, sharding.replicated(mesh))
  train_step = make_train_step(graphdef, tx, config, info, out_sharding=sharding.replicated(mesh))
  sampler = EpochSampler(images.shape[0], batch_size, 1, config.seed)
  metrics = sharding.put_replicated(Metrics.zeros(), mesh)
  index = sharding.global_batch(sampler.batch(0), mesh)
  compiled = train_step.lower(state, metrics, images, labels, index, False).compile()
  for _ in range(steps):
    state, metrics = compiled(state, metrics, images, labels, index)
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as log_dir:
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
      import time

      start = time.perf_counter()
      for _ in range(steps):
        state, metrics = compiled(state, metrics, images, labels, index)
      jax.block_until_ready(metrics)
      step_us = (time.perf_counter() - start) * 1e6
    durations = trace_durations(log_dir)
  ops = parse_hlo(compiled.as_text())
  classes = hlo_classes(ops)
  class_us, per_op = collections.Counter(), []
  for name, us in durations.items():
    if name in classes:
      class_us[classes[name]] += us
      source = '/'.join(ops[name]['op_name'].split('/')[-2:]) or ops[name]['opcode']
      per_op.append((f'{name} ({source})', classes[name], us))
  return dict(
    side=f'jax {jax.__version__}',
    xla_flags=os.environ.get('XLA_FLAGS', ''),
    **summary(class_us, step_us, steps, per_op, top),
  )


def torch_class(event) -> str | None:
  """The class of a torch.profiler event's self time; None for the profiler's own."""
  parent, name = event, event.name
  while parent is not None:
    if parent.name.startswith('Optimizer.'):
      return OPTIMIZER
    parent = parent.cpu_parent
  if name in TORCH_DENSE:
    return DENSE
  if name in TORCH_BATCHED:
    return BATCHED
  if name in TORCH_COPIES:
    return COPIES
  if name.startswith('aten::'):
    return ELEMENTWISE
  return None


def torch_side(config, batch_size: int, steps: int, top: int) -> dict:
  """Profiles the PyTorch twin's training step in this process."""
  import time

  import torch
  from torch.profiler import ProfilerActivity, profile

  from gmm_vit_jax.benchmarks.torch_compare import torch_window

  window = torch_window(config, batch_size, False, 'float32')
  window(steps)
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    start = time.perf_counter()
    window(steps)
    step_us = (time.perf_counter() - start) * 1e6
  class_us, per_op = collections.Counter(), collections.Counter()
  for event in prof.events():
    cls = torch_class(event)
    if cls:
      class_us[cls] += event.self_cpu_time_total
      per_op[event.name, cls] += event.self_cpu_time_total
  per_op = [(name, cls, us) for (name, cls), us in per_op.items()]
  return dict(
    side=f'pytorch {torch.__version__} (eager, {torch.get_num_threads()} threads)',
    **summary(class_us, step_us, steps, per_op, top),
  )


def run_side(side: str) -> dict:
  """One side profiled in a fresh process; its JSON result."""
  done = subprocess.run(
    [sys.executable, '-m', __spec__.name, *sys.argv[1:], f'--side={side}'],
    capture_output=True,
    text=True,
    check=False,
  )
  if done.returncode:
    raise cli.child_failed(f'the {side} side', done)
  return json.loads(done.stdout.strip().splitlines()[-1])


def report(config, batch_size: int, steps: int, sides: list[dict]) -> list[str]:
  lines = [
    f'CPU: {cpu_description()}; load average {os.getloadavg()[0]:.1f}',
    f'{config.model.name} (mask {config.model.mask.kind}), batch {batch_size}, float32, '
    f'{steps} profiled steps per side, each side in its own process; '
    f'XLA_FLAGS={sides[0]["xla_flags"]}',
    f'{"":28s}' + ''.join(f'{s["side"].split(" (")[0]:>24s}' for s in sides),
    f'{"step, ms (profiled)":28s}' + ''.join(f'{s["step_ms"]:>24,.0f}' for s in sides),
  ]
  for cls in CLASSES:
    cells = [s['classes'][cls] for s in sides]
    lines.append(f'{cls:28s}' + ''.join(f'{c["ms"]:>14,.1f} ms {c["share"]:>6.1%}' for c in cells))
  for s in sides:
    lines.append(f'costliest operations of each class, {s["side"]}:')
    lines += [f'  {row["ms"]:>10,.1f} ms  {row["cls"]:28s} {row["name"][:80]}' for row in s['top']]
  return lines


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.side:
    side = jax_side if FLAGS.side == 'jax' else torch_side
    print(json.dumps(side(config, FLAGS.batch_size, FLAGS.steps, FLAGS.top)))
    return
  sides = [run_side('jax'), run_side('torch')]
  if FLAGS.json:
    print(
      json.dumps(
        dict(
          cpu=cpu_description(),
          load_average=os.getloadavg()[0],
          model=config.model.name,
          batch_size=FLAGS.batch_size,
          sides=sides,
        )
      )
    )
    return
  print('\n'.join(report(config, FLAGS.batch_size, FLAGS.steps, sides)))


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Path to a config file.')
  flags.DEFINE_integer('batch_size', 128, 'Batch size of both sides.')
  flags.DEFINE_integer('steps', 2, 'Profiled steps, after as many untimed ones.')
  flags.DEFINE_integer('top', 3, 'Costliest operations listed per class and side.')
  flags.DEFINE_bool('json', False, 'Print one JSON line instead of tables.')
  flags.DEFINE_enum('side', None, ['jax', 'torch'], 'Profile one side in this process, as JSON.')
  flags.mark_flags_as_required(['config'])
  cli.run_app(main)
