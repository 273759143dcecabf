"""Input pipelines: where each step's batch comes from, behind one interface.

'device': both splits resident on every device as uint8 (sharding.put_replicated); a
  batch is a vector of row indices and the step gathers its rows on the device. The
  fastest path, for datasets that fit (CIFAR, SVHN, Tiny-ImageNet, digits).
'grain':  examples read, decoded and resized on the host by grain (tfds data_source /
  ArrayRecord, image folders), each process building only its own rows of every global
  batch (grain.sharding.ShardByJaxProcess), placed on the devices as global arrays split
  on 'data' a few batches ahead. For datasets beyond device memory (ImageNet).
'auto':   'device' when every split fits dataset.resident_share of one device's memory.

Both draw the rows of training step s from the same EpochSampler, a pure function of
(seed, s): a resumed run reads exactly the batches an uninterrupted one would, and the two
pipelines give the same batches. Augmentation runs on the device in both.

A pipeline offers steps_per_epoch, eval_splits, examples(split, n) (host images for
pictures), train_batches(start, stop) and eval_batches(split), which yield the data
arguments of the train step (images, labels, index) and the eval step (images, labels,
index, weight); index is None where the batch arrives gathered.
"""

import collections
import logging
import os

import grain
import jax
import ml_collections
import numpy as np

from gmm_vit_jax import sharding
from gmm_vit_jax.data import records, validation, workers
from gmm_vit_jax.data.info import dataset_info
from gmm_vit_jax.data.sampling import EpochSampler, eval_batches
from gmm_vit_jax.errors import ConfigError, check_choice

PIPELINES = ('device', 'grain', 'auto')


def _holdout(config: ml_collections.ConfigDict, labels: np.ndarray) -> dict:
  """{'train': rows} or, with dataset.validation set, {'train': rows, 'validation': rows};
  {'train': rows} too where the data has a validation split of its own."""
  fraction = validation.check_fraction(config.dataset.validation)
  if fraction is not None and config.dataset.get('validation_split'):
    logging.warning(
      'dataset.validation=%g is not used: the data has a validation split of its own (%s).',
      fraction,
      config.dataset.validation_split,
    )
    fraction = None
  if fraction is None:
    return {'train': np.arange(len(labels))}
  train, held = validation.holdout(labels, fraction, config.seed)
  if not len(held):
    raise ConfigError(
      f'dataset.validation={fraction} holds out no example: every class has '
      f'fewer than {0.5 / fraction:.0f} examples; raise it or set None.'
    )
  return {'train': train, 'validation': held}


class DevicePipeline:
  """Every split resident on every device; batches picked by index."""

  def __init__(self, config: ml_collections.ConfigDict, mesh):
    self.mesh, self.eval_batch_size = mesh, config.eval_batch_size
    d = config.dataset
    host = {split: records.read_split(d, split, download=d.download) for split in records.splits(d)}
    images, labels = host.pop('train')
    for split, rows in _holdout(config, labels).items():
      host[split] = (images[rows], labels[rows])
    self.host_examples, self.splits = {}, {}
    for split, (images, labels) in host.items():
      self.host_examples[split] = images[:64]
      self.splits[split] = sharding.put_replicated((images, labels), mesh)
      logging.info(
        '%s split: %d images of %s, resident on the devices.', split, len(labels), images.shape[1:]
      )
    self.sampler = EpochSampler(
      len(host['train'][1]), config.batch_size, config.passes_per_epoch, config.seed
    )
    self.steps_per_epoch = self.sampler.steps_per_epoch
    self.eval_splits = tuple(s for s in ('test', 'validation') if s in self.splits)

  def examples(self, split: str, n: int) -> np.ndarray:
    return self.host_examples[split][:n]

  def train_batches(self, start: int, stop: int):
    images, labels = self.splits['train']
    for step in range(start, stop):
      yield images, labels, sharding.global_batch(self.sampler.batch(step), self.mesh)

  def eval_batches(self, split: str):
    images, labels = self.splits[split]
    for index, weight in eval_batches(labels.shape[0], self.eval_batch_size):
      yield (
        images,
        labels,
        sharding.global_batch(index, self.mesh),
        sharding.global_batch(weight, self.mesh),
      )


class _Rows:
  """Picklable for grain's workers: the images and labels of given rows of a record source,
  this process's share of a global batch."""

  def __init__(self, source, rows: np.ndarray, shard: grain.sharding.ShardOptions):
    self.source, self.rows, self.shard = source, rows, shard

  def local(self, global_rows: np.ndarray) -> np.ndarray:
    return np.split(global_rows, self.shard.shard_count)[self.shard.shard_index]

  def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    examples = [self.source[int(self.rows[r])] for r in rows]
    return (
      np.stack([image for image, _ in examples]),
      np.array([label for _, label in examples], np.int32),
    )


class _TrainBatch(_Rows):
  def __init__(self, source, rows, shard, sampler: EpochSampler):
    super().__init__(source, rows, shard)
    self.sampler = sampler

  def __call__(self, step: int):
    return self.read(self.local(self.sampler.batch(step)))


class _EvalBatch(_Rows):
  def __init__(self, source, rows, shard, batches: list):
    super().__init__(source, rows, shard)
    self.batches = batches

  def __call__(self, i: int):
    index, weight = self.batches[i]
    images, labels = self.read(self.local(index))
    return images, labels, self.local(weight)


class GrainPipeline:
  """Examples streamed from record sources by grain, batched per process."""

  def __init__(self, config: ml_collections.ConfigDict, mesh, opened: dict):
    d = config.dataset
    self.mesh, self.eval_batch_size = mesh, config.eval_batch_size
    self.workers, self.threads, self.prefetch = d.grain_workers, d.grain_threads, d.prefetch
    self.shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    for field in ('batch_size', 'eval_batch_size'):
      if config[field] % self.shard.shard_count:
        raise ConfigError(
          f'{field}={config[field]} does not divide by the {self.shard.shard_count} processes.'
        )
    train_records = opened.pop('train')
    self.sources = {
      split: (records_, np.arange(len(records_))) for split, records_ in opened.items()
    }
    held = (
      _holdout(config, train_records.labels())
      if d.validation
      else {'train': np.arange(len(train_records))}
    )
    for split, rows in held.items():
      self.sources[split] = (train_records, rows)
    for split, (_, rows) in self.sources.items():
      logging.info(
        '%s split: %d examples, streamed by grain (%d workers, %d threads).',
        split,
        len(rows),
        self.workers,
        self.threads,
      )
    self.sampler = EpochSampler(
      len(self.sources['train'][1]), config.batch_size, config.passes_per_epoch, config.seed
    )
    self.steps_per_epoch = self.sampler.steps_per_epoch
    self.eval_splits = tuple(s for s in ('test', 'validation') if s in self.sources)

  def examples(self, split: str, n: int) -> np.ndarray:
    source, rows = self.sources[split]
    return np.stack([source[int(r)][0] for r in rows[:n]])

  def _stream(self, dataset: grain.MapDataset):
    # grain reads at most as many examples in parallel as its buffer holds.
    dataset = dataset.to_iter_dataset(
      grain.ReadOptions(
        num_threads=self.threads, prefetch_buffer_size=max(self.threads, self.prefetch)
      )
    )
    if self.workers:
      dataset = dataset.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=self.workers),
        worker_init_fn=workers.worker_init_fn(),
      )
    return dataset

  def _to_devices(self, batches):
    """Host batches -> global arrays split on 'data', `prefetch` of them in flight."""
    sharded = sharding.batch_sharded(self.mesh)
    put = lambda local: jax.make_array_from_process_local_data(sharded, local)
    queue = collections.deque()
    for batch in batches:
      queue.append(jax.tree.map(put, batch))
      if len(queue) > self.prefetch:
        yield queue.popleft()
    yield from queue

  def host_train_batches(self, start: int, stop: int):
    """This process's (images, labels) of training steps start..stop-1, on the host."""
    source, rows = self.sources['train']
    return self._stream(
      grain.MapDataset.range(start, stop).map(_TrainBatch(source, rows, self.shard, self.sampler))
    )

  def train_batches(self, start: int, stop: int):
    for images, labels in self._to_devices(self.host_train_batches(start, stop)):
      yield images, labels, None

  def eval_batches(self, split: str):
    source, rows = self.sources[split]
    batches = list(eval_batches(len(rows), self.eval_batch_size))
    dataset = grain.MapDataset.range(len(batches)).map(
      _EvalBatch(source, rows, self.shard, batches)
    )
    for images, labels, weight in self._to_devices(self._stream(dataset)):
      yield images, labels, None, weight


def device_memory_bytes() -> int:
  """One device's memory; a CPU's is the host's."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return int(stats['bytes_limit'])
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def make_pipeline(config: ml_collections.ConfigDict, mesh):
  """The pipeline dataset.pipeline names; 'auto' decides by size, and the log says why."""
  d = config.dataset
  check_choice('dataset.pipeline', d.pipeline, PIPELINES)
  choice = d.pipeline
  if choice == 'auto':
    info = dataset_info(d)
    example = info['image_size'] ** 2 * info['channels']
    needed = example * sum(records.num_examples(d, split) for split in records.splits(d))
    budget = d.resident_share * device_memory_bytes()
    choice = 'device' if needed <= budget else 'grain'
    logging.info(
      "Input pipeline: %r (dataset.pipeline='auto'): the splits take %.2f GB as "
      "uint8, %s dataset.resident_share=%g of one device's memory (%.2f GB).",
      choice,
      needed / 1e9,
      'within' if choice == 'device' else 'beyond',
      d.resident_share,
      budget / 1e9,
    )
  else:
    logging.info('Input pipeline: %r (dataset.pipeline=%r).', choice, d.pipeline)
  if choice == 'device':
    return DevicePipeline(config, mesh)
  return GrainPipeline(
    config, mesh, {split: records.open_records(d, split) for split in records.splits(d)}
  )
