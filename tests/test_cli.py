"""The command-line contract: every mistake in a command line is one `error:` line and exit 1.

The flag parsing is tested in-process on flags of its own (milliseconds a case); a few
real commands show the console a person sees.
"""

import os
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from gmm_vit_jax import cli, errors
from tests.model_testing import QUICK_COMPILES_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, 'configs', 'quickstart.py')


def parse(argv: list[str], capsys) -> str:
  """The one stderr line of parsing argv with train.py's flags; fails unless it exits 1."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file.', flag_values=flag_values, sys_argv=argv
  )
  flags.DEFINE_string('workdir', None, 'Where the run goes.', flag_values=flag_values)
  flags.mark_flags_as_required(['config'], flag_values=flag_values)
  with pytest.raises(SystemExit) as exit_info:
    cli.parse_flags(argv, flag_values)
  assert exit_info.value.code == errors.EXIT_ERROR
  err = capsys.readouterr().err
  assert 'Traceback' not in err and len(err.strip().splitlines()) == 1, err
  assert err.startswith('error: ')
  return err.strip()


def test_a_config_file_that_does_not_exist_names_the_closest(capsys):
  line = parse(['train.py', f'--config={ROOT}/configs/quikstart.py'], capsys)
  assert 'quikstart.py: no file there' in line and f'{QUICKSTART}?' in line


def test_a_config_directory_is_not_a_file(capsys):
  assert 'a directory there' in parse(['train.py', f'--config={ROOT}/configs'], capsys)


def test_a_config_file_with_a_syntax_error_names_its_line(tmp_path, capsys):
  path = tmp_path / 'broken.py'
  path.write_text('def get_config():\n  return dict(a=1\n')
  assert parse(['train.py', f'--config={path}'], capsys).startswith(f'error: {path} line 2')


def test_an_argument_the_config_refuses_says_what_it_accepts(capsys):
  line = parse(['train.py', f'--config={QUICKSTART}:cifar11'], capsys)
  assert "dataset.name='cifar11' is not supported; choose one of" in line


@pytest.mark.parametrize(
  'override, closest',
  [
    ('--config.optimzer.learning_rate=1e-3', "'optimizer.learning_rate'"),
    ('--config.epoch=5', "'epochs'"),
    ('--config.learning_rate=1e-3', "'optimizer.learning_rate'"),
    ('--config.model.num_head=2', "'model.num_heads'"),
    ('--noconfig.augment.flp', "'augment.flip'"),
  ],
)
def test_a_typo_in_a_field_is_answered_with_the_closest_name(override, closest, capsys):
  line = parse(['train.py', f'--config={QUICKSTART}', override], capsys)
  assert f'did you mean {closest}?' in line, line


def test_a_value_of_the_wrong_type_names_the_type(capsys):
  line = parse(['train.py', f'--config={QUICKSTART}', '--config.epochs=2.5'], capsys)
  assert line.startswith('error: --config.epochs=2.5 is not an int')


@pytest.mark.parametrize(
  'argv, expected',
  [
    (['train.py'], 'error: --config is required: Path to a config file.'),
    (['train.py', f'--config={QUICKSTART}', '--workdr=x'], "Unknown command line flag 'workdr'"),
  ],
)
def test_missing_and_unknown_flags_are_one_line(argv, expected, capsys):
  assert expected in parse(argv, capsys)


def test_a_good_command_line_parses(tmp_path):
  argv = ['train.py', f'--config={QUICKSTART}', '--config.epochs=5', f'--workdir={tmp_path}']
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'help', flag_values=flag_values, sys_argv=argv)
  flags.DEFINE_string('workdir', None, 'help', flag_values=flag_values)
  assert cli.parse_flags(argv, flag_values) == ['train.py']
  assert flag_values.config.epochs == 5


def run(*args, env=None) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, **QUICK_COMPILES_ENV, **(env or {})},
    timeout=300,
  )


def assert_one_error_line(done: subprocess.CompletedProcess, contains: str) -> None:
  out = done.stdout + done.stderr
  assert done.returncode == errors.EXIT_ERROR, out[-3000:]
  assert 'Traceback' not in out and 'FATAL' not in out, out[-3000:]
  lines = [line for line in out.splitlines() if line.startswith('error:')]
  assert len(lines) == 1 and contains in lines[0], out[-3000:]


def test_train_answers_a_typo_with_one_line(tmp_path):
  done = run(
    'train.py', '--config=configs/quickstart.py', '--config.epoch=5', f'--workdir={tmp_path}'
  )
  assert_one_error_line(done, "did you mean 'epochs'?")
  assert not os.listdir(tmp_path)


def test_verbosity_1_adds_the_traceback():
  done = run('-m', 'gmm_vit_jax.complexity', '--config=configs/nope.py', '--verbosity=1')
  assert done.returncode == errors.EXIT_ERROR
  assert 'Traceback' in done.stderr and done.stderr.strip().splitlines()[-1].startswith('error:')


@pytest.mark.parametrize(
  'command, contains',
  [
    (['-m', 'gmm_vit_jax.complexity'], '--config is required'),
    (['-m', 'gmm_vit_jax.complexity', '--config=configs/nope.py'], 'no file there'),
    (
      [
        '-m',
        'gmm_vit_jax.benchmarks.speed',
        '--config=configs/quickstart.py',
        '--config.batchsize=8',
      ],
      "did you mean 'batch_size'?",
    ),
    (['-m', 'gmm_vit_jax.convert', 'sideways', '--out=x'], 'give one command'),
  ],
)
def test_every_command_keeps_the_contract(command, contains):
  assert_one_error_line(run(*command), contains)


def test_a_failed_child_command_is_its_own_last_line():
  done = subprocess.CompletedProcess([], 1, stdout='', stderr='starting\nerror: no data.\n')
  error = cli.child_failed("variant 'all'", done)
  assert isinstance(error, errors.UserError)
  assert str(error) == "variant 'all' failed with exit code 1: error: no data."
