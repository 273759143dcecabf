"""What the console shows: the progress line, the eval line, the verbosity switch, and
the metrics and pictures a run writes beside it."""

import io
import logging
import re

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gmm_vit_jax import console
from gmm_vit_jax.data.info import dataset_info
from gmm_vit_jax.training import pictures
from gmm_vit_jax.training.progress import (
  CLEAR_LINE,
  Progress,
  closing_line,
  epoch_of,
  eval_figures,
  format_duration,
)
from gmm_vit_jax.training.writers import create_writer
from tests.test_training import tiny_config


class Clock:
  def __init__(self, times):
    self.times = list(times)

  def __call__(self):
    return self.times.pop(0)


class Terminal(io.StringIO):
  def isatty(self):
    return True


METRICS = {'train_loss': 1.23456, 'train_accuracy': 0.5}


@pytest.mark.parametrize(
  'seconds, text', [(0.4, '0s'), (59.4, '59s'), (61, '1m01s'), (3599, '59m59s'), (7440, '2h04m')]
)
def test_durations_read_as_a_person_reads_them(seconds, text):
  assert format_duration(seconds) == text


def test_epochs_count_from_one_and_end_on_their_last_step():
  assert [epoch_of(s, 10) for s in (1, 10, 11, 20, 21)] == [1, 1, 2, 2, 3]


def test_progress_lines_are_log_lines_off_a_terminal(caplog):
  # Called after steps 1 (starts the clock), 2 (too soon), 10 and 30 (due).
  progress = Progress(
    total_steps=100,
    steps_per_epoch=25,
    batch_size=64,
    every_s=3.0,
    stream=io.StringIO(),
    clock=Clock([0.0, 1.0, 4.0, 14.0]),
  )
  with caplog.at_level(logging.INFO):
    for step in (1, 2, 10, 30):
      progress(step, lambda: METRICS)
  lines = [r.getMessage() for r in caplog.records]
  # Step 10: 9 steps of 64 images in 4 s; 90 steps left at 9 / 4 steps/s.
  assert lines[0] == ('epoch 1/4  step 10/100  144 img/s  loss 1.2346  accuracy 50.0%  ETA 40s')
  # Step 30: 20 steps in 10 s since the last line; 70 left at 29 / 14 steps/s.
  assert lines[1].startswith('epoch 2/4  step 30/100  128 img/s')
  assert lines[1].endswith(f'ETA {format_duration(70 / (29 / 14))}')
  assert progress.lines == 2


def test_eval_time_is_left_out_of_the_rates_and_gets_one_line(caplog):
  progress = Progress(
    total_steps=100,
    steps_per_epoch=25,
    batch_size=10,
    every_s=1.0,
    stream=io.StringIO(),
    clock=Clock([0.0, 30.0]),
  )
  with caplog.at_level(logging.INFO):
    progress(1, lambda: METRICS)
    progress.eval_done(25, {'eval_accuracy': 0.975, 'eval_loss': 0.25}, 20.0)
    progress(11, lambda: METRICS)
  eval_line, line = [r.getMessage() for r in caplog.records]
  assert eval_line == 'eval  epoch 1/4  step 25/100  test 97.50%  loss 0.2500  (20s)'
  # 10 steps in 30 - 20 = 10 s of training.
  assert '  10 img/s  ' in line and line.endswith('ETA 1m29s')


def test_progress_lines_are_capped_over_the_run(caplog):
  # Due every 1 s of a clock that moves 2 s a step; at most 4 lines over 100 steps.
  progress = Progress(
    total_steps=100,
    steps_per_epoch=25,
    batch_size=8,
    every_s=1.0,
    max_lines=4,
    stream=io.StringIO(),
    clock=Clock(range(0, 200, 2)),
  )
  with caplog.at_level(logging.INFO):
    for step in range(1, 101):
      progress(step, lambda: METRICS)
  steps = [int(re.search(r'step (\d+)/', r.getMessage()).group(1)) for r in caplog.records]
  assert steps == [26, 51, 76] and progress.lines == 3


@pytest.mark.parametrize(
  'results, text',
  [
    ({'eval_accuracy': 0.98333, 'eval_loss': 0.04213}, 'test 98.33%  loss 0.0421'),
    (
      {
        'val_accuracy': 0.979,
        'eval_accuracy': 0.9833,
        'eval_ema_accuracy': 0.986,
        'eval_loss': 0.5,
      },
      'val 97.90%  test 98.33%  ema 98.60%  loss 0.5000',
    ),
    (
      {
        'val_accuracy': 0.979,
        'val_ema_accuracy': 0.98,
        'eval_accuracy': 0.9833,
        'eval_ema_accuracy': 0.986,
        'eval_loss': 0.5,
      },
      'val 97.90%  test 98.33%  ema val 98.00%  ema test 98.60%  loss 0.5000',
    ),
  ],
)
def test_eval_lines_show_every_split_and_the_moving_average(results, text):
  assert eval_figures(results) == text


def test_the_closing_line_names_the_metric_the_best_checkpoint_is_chosen_on():
  summary = dict(
    step=20,
    total_steps=20,
    val_accuracy=0.9,
    eval_accuracy=0.95,
    eval_loss=0.25,
    best_val_accuracy=0.925,
    best_eval_accuracy=0.95,
    best_step=10,
    train_wall_time_s=75.0,
    train_images_per_s=1234.4,
  )
  assert closing_line(summary, 'run/summary.json', 'val_accuracy') == (
    'Done at step 20/20: val 90.00%  test 95.00%  loss 0.2500; best val 92.50% at step 10 '
    '(the checkpoint export takes, chosen on validation accuracy); 1m15s in all, 1,234 img/s '
    'of training. Summary: run/summary.json'
  )


def test_console_records_start_with_the_time_and_warnings_say_so():
  formatter = console.ShortPrefix()
  record = logging.LogRecord('x', logging.WARNING, __file__, 1, 'disk %s', ('low',), None)
  assert re.fullmatch(r'\d\d:\d\d:\d\d  warning: disk low', formatter.format(record))
  record = logging.LogRecord('x', logging.INFO, __file__, 1, 'step  5', (), None)
  assert re.fullmatch(r'\d\d:\d\d:\d\d  step  5', formatter.format(record))


def test_on_a_terminal_the_line_is_rewritten_and_log_records_clear_it():
  terminal = Terminal()
  progress = Progress(
    total_steps=100,
    steps_per_epoch=25,
    batch_size=64,
    every_s=1.0,
    stream=terminal,
    clock=Clock([0.0, 2.0, 4.0]),
  )
  handler = logging.StreamHandler(terminal)
  root = logging.getLogger()
  root.addHandler(handler)
  try:
    with progress.attached():
      progress(1, lambda: METRICS)
      progress(5, lambda: METRICS)
      root.warning('a record')
      progress(9, lambda: METRICS)
  finally:
    root.removeHandler(handler)
  # The line, erased before the record, then redrawn, and ended with a newline on leaving.
  pattern = (
    re.escape(CLEAR_LINE)
    + r'(epoch 1/4  step 5/100 [^\n]*)'
    + re.escape(CLEAR_LINE)
    + 'a record\n'
    + re.escape(CLEAR_LINE)
    + r'(epoch 1/4  step 9/100 [^\n]*)\n'
  )
  assert re.fullmatch(pattern, terminal.getvalue()), terminal.getvalue()


@pytest.mark.parametrize(
  'argv, level',
  [
    (['train.py'], 0),
    (['train.py', '--verbosity=1'], 1),
    (['train.py', '-v', '2'], 2),
    (['train.py', '--verbosity', 'debug'], 1),
    (['train.py', '--v=-1'], -1),
    (['train.py', '--verbose_other=3'], 0),
  ],
)
def test_verbosity_is_read_from_the_command_line(argv, level):
  assert console.argv_verbosity(argv) == level


def test_scalars_are_tensorboard_scalars(tmp_path):
  writer = create_writer(str(tmp_path), log_metrics=False)
  writer.write_scalars(10, {'train_loss': 0.5, 'eval_accuracy': np.float32(0.25)})
  writer.write_scalars(20, {'train_loss': 0.375})
  writer.close()
  events = EventAccumulator(str(tmp_path))
  events.Reload()
  assert [(e.step, e.value) for e in events.Scalars('train_loss')] == [(10, 0.5), (20, 0.375)]
  assert [(e.step, e.value) for e in events.Scalars('eval_accuracy')] == [(10, 0.25)]


def test_pictures_are_large_enough_to_see():
  config = tiny_config()
  config.patch_selection.update(kind='contrast', keep=0.5)
  images = np.random.default_rng(0).integers(0, 17, (8, 8, 8, 1)).astype(np.uint8) * 15
  augmented = pictures.augmentation_picture(
    images, jax.random.key(0), config, dataset_info('digits')
  )
  kept = pictures.kept_patches_picture(config, images)
  for picture in (augmented, kept):
    assert picture.dtype == np.uint8 and picture.shape[2] == 3
    assert picture.shape[1] >= 600
  assert augmented.shape[0] >= pictures.MIN_GRID_PX


@pytest.mark.parametrize('heads', [1, 4])
def test_the_masks_picture_holds_its_whole_title(heads):
  """A one-head model made a figure narrower than its title, which lost both ends."""
  import matplotlib.pyplot as plt
  from flax import nnx

  from gmm_vit_jax.models import build_from_config
  from gmm_vit_jax.visualize import plot_gmm_masks

  config = tiny_config()
  config.model.update(num_heads=heads, head_dim=16 // heads)
  model = build_from_config(config)
  graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
  written = pictures.gmm_masks_picture(graphdef, params, buffers, step=7, mode='multiply')
  figure = plot_gmm_masks(model)  # The notebooks' picture, with a title of its own.
  shown = pictures.rendered(figure)
  plt.close(figure)
  for picture in (written, shown):
    title = picture[: picture.shape[0] // 8]  # The title lines sit above the panels.
    assert (title < 128).any()
    for edge in (title[:, :3], title[:, -3:]):
      assert (edge == 255).all()
