"""What the command-line tools do with errors: one line a person can act on, and an exit code.

    if __name__ == '__main__':
      cli.run_app(main)

Every command exits 0 when done, errors.EXIT_STOPPED (75) when stopped and resumable,
and errors.EXIT_ERROR (1) on an error, printed as one line `error: <cause and fix>`.
The flags are parsed inside that contract: a config file that is missing, does not
parse or refuses its argument, an override of a field that does not exist (answered
with the closest name), a value of the wrong type, an unknown or missing flag. So are
UserErrors, storage failures (disk full, permissions) and usage errors raised by main.
`--verbosity=1` adds the traceback. Anything else is a bug and keeps its traceback.
A Ctrl-C the command does not handle itself (the trainer stops at its next step
and saves) prints one line and exits with errors.EXIT_STOPPED.
"""

import os
import re
import sys
import traceback
from typing import NoReturn

from absl import app, flags, logging

# The classes of config_flags' file flags, which its package does not re-export.
from ml_collections.config_flags.config_flags import ConfigFileFlagParser, is_config_flag

from gmm_vit_jax import config_files, errors


def run(main, argv) -> None:
  """Calls main(argv) and exits with the code it returns (None: EXIT_OK)."""
  try:
    code = main(argv)
  except app.UsageError as e:
    _fail(f'{str(e).rstrip(".")}; --helpshort lists the flags.', verbose=_verbose())
  except KeyboardInterrupt:
    sys.stderr.write('Stopped by Ctrl-C; rerun the same command to go on.\n')
    sys.exit(errors.EXIT_STOPPED)
  except Exception as e:  # pylint: disable=broad-except
    storage = errors.describe_storage_error(e)
    if storage is None and not isinstance(e, errors.UserError):
      raise
    if _verbose():
      logging.exception('Traceback of the error below:')
    sys.stderr.write(f'error: {_one_line(storage or str(e))}\n')
    sys.stdout.flush()
    sys.stderr.flush()
    if storage is not None:
      # The failed save's background threads would print tracebacks of their own on the
      # way out; what is on disk is already committed or already lost.
      os._exit(errors.EXIT_ERROR)
    sys.exit(errors.EXIT_ERROR)
  sys.exit(errors.EXIT_OK if code is None else code)


def child_failed(what: str, done) -> errors.UserError:
  """The error of a child command (a subprocess.CompletedProcess) that failed: its own last
  line; the rest of its output goes to the log at --verbosity=1."""
  logging.debug('%s wrote:\n%s', what, done.stderr)
  lines = done.stderr.strip().splitlines()
  return errors.UserError(
    f'{what} failed with exit code {done.returncode}: {lines[-1] if lines else "no output"}'
  )


def run_app(main, argv: list[str] | None = None) -> None:
  """absl's app.run of main with the flags parsed, and main run, inside the contract;
  argv: the command line (default sys.argv)."""
  app.run(lambda argv: run(main, argv), argv=argv, flags_parser=parse_flags)


def _verbose() -> bool:
  return logging.get_verbosity() > logging.INFO


def _one_line(message: str) -> str:
  return ' '.join(message.split())


def _fail(message: str, *, verbose: bool) -> NoReturn:
  if verbose:
    traceback.print_exc()
  sys.stdout.flush()
  sys.stderr.write(f'error: {_one_line(message)}\n')
  sys.stderr.flush()
  sys.exit(errors.EXIT_ERROR)


# --verbosity=N, --verbosity N, -v=N, -v N, --v=N: absl's own spellings.
_VERBOSITY = re.compile(r'^--?(?:verbosity|v)(?:=(-?\d+))?$')


def _verbosity_in(argv: list[str]) -> int:
  """The --verbosity that argv asks for; read by hand, since its parsing is what failed."""
  level = 0
  for i, arg in enumerate(argv):
    match = _VERBOSITY.match(arg)
    if match:
      value = match.group(1) or (argv[i + 1] if i + 1 < len(argv) else '0')
      level = int(value) if re.fullmatch(r'-?\d+', value) else level
  return level


def _config_file_flags(flag_values: flags.FlagValues) -> list[str]:
  """The names of the flags that take a config file (config_flags.DEFINE_config_file)."""
  return sorted(
    name
    for name in flag_values
    if is_config_flag(flag_values[name])
    and isinstance(flag_values[name].parser, ConfigFileFlagParser)
  )


def _flag_value(argv: list[str], name: str) -> str | None:
  """The last value argv gives --name (as --name=VALUE or --name VALUE)."""
  value = None
  for i, arg in enumerate(argv):
    if re.fullmatch(f'--?{name}', arg) and i + 1 < len(argv):
      value = argv[i + 1]
    elif re.match(f'--?{name}=', arg):
      value = arg.split('=', 1)[1]
  return value


def check_config_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Loads each config file that argv names and checks the fields its overrides name.

  config_flags would raise these failures as tracebacks from inside absl's parsing, or
  not until the config is first used.
  """
  for name in _config_file_flags(flag_values):
    value = _flag_value(argv, name)
    if value is None:
      continue
    config = config_files.load(value, flag=f'--{name}')
    for arg in argv:
      override = re.match(f'--?(?:no)?{name}\\.([^=]+)', arg)
      if override:
        config_files.check_field(config, override.group(1), flag=f'--{name}')


def _describe_flag_error(e: flags.Error, flag_values: flags.FlagValues) -> str:
  text = ' '.join(str(e).split())
  required = re.search(r'Flag --(\S+) must have a value other than None', text)
  if required:
    # Multi flags' help ends in absl's own '; repeat this option ...' note.
    help_text = flag_values[required.group(1)].help.split(';')[0].rstrip('.')
    return f'--{required.group(1)} is required: {help_text}.'
  value = re.match(r'flag --(\S+?)=(.*?): (.*)', text)
  if value and value.group(1) in flag_values:
    flag = flag_values[value.group(1)]
    if '.' in flag.name and flag.name.split('.')[0] in _config_file_flags(flag_values):
      kind = flag.flag_type()
      article = 'an' if kind[:1] in 'aeiou' else 'a'
      return (
        f'--{flag.name}={value.group(2)} is not {article} {kind} '
        f'({value.group(3).rstrip(".")}); the field holds {article} {kind}.'
      )
  return f'{text.rstrip(".")}; --helpshort lists the flags.'


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """absl's flag parsing, its failures one `error:` line each (app.run's flags_parser).

  Returns the arguments left for main.
  """
  try:
    check_config_flags(argv, flag_values)
    return flag_values(argv)
  except errors.UserError as e:
    _fail(str(e), verbose=_verbosity_in(argv) >= 1)
  except flags.Error as e:
    _fail(_describe_flag_error(e, flag_values), verbose=_verbosity_in(argv) >= 1)
