"""What the command-line tools do with errors: one line a person can act on, and an exit code.

    app.run(lambda argv: cli.run(main, argv))

UserErrors and storage failures (disk full, permissions) print `error: <message>` and
exit with errors.EXIT_ERROR; `--verbosity=1` adds the traceback. Anything else is a
bug and keeps its traceback. A Ctrl-C the command does not handle itself (the trainer
stops at its next step and saves) prints one line and exits with errors.EXIT_STOPPED.
"""

import os
import sys

from absl import logging

from gmm_vit_jax import errors


def run(main, argv) -> None:
  """Calls main(argv) and exits with the code it returns (None: EXIT_OK)."""
  try:
    code = main(argv)
  except KeyboardInterrupt:
    sys.stderr.write('Stopped by Ctrl-C; rerun the same command to go on.\n')
    sys.exit(errors.EXIT_STOPPED)
  except Exception as e:  # pylint: disable=broad-except
    storage = errors.describe_storage_error(e)
    if storage is None and not isinstance(e, errors.UserError):
      raise
    if logging.get_verbosity() > logging.INFO:
      logging.exception('Traceback of the error below:')
    sys.stderr.write(f'error: {storage or e}\n')
    sys.stdout.flush()
    sys.stderr.flush()
    if storage is not None:
      # The failed save's background threads would print tracebacks of their own on the
      # way out; what is on disk is already committed or already lost.
      os._exit(errors.EXIT_ERROR)
    sys.exit(errors.EXIT_ERROR)
  sys.exit(errors.EXIT_OK if code is None else code)
