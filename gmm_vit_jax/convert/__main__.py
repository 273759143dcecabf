"""Converter CLI: `torch-reference` (state_dict -> bundle) and `to-torch` (bundle -> state_dict)."""

from absl import app, flags
from ml_collections import config_flags

from gmm_vit_jax import cli, convert

COMMANDS = ('torch-reference', 'to-torch')

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Experiment config of the reference model (torch-reference).'
)
_STATE_DICT = flags.DEFINE_string('state_dict', None, 'Reference .pth file (torch-reference).')
_EXPORT = flags.DEFINE_string('export', None, 'Bundle directory to convert (to-torch).')
_OUT = flags.DEFINE_string('out', None, 'Bundle directory or .pth file to write.', required=True)


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f'give one command, one of {COMMANDS}; got {argv[1:]}')
  if argv[1] == 'torch-reference':
    if _CONFIG.value is None or _STATE_DICT.value is None:
      raise app.UsageError('torch-reference needs --config and --state_dict.')
    convert.reference_to_bundle(_CONFIG.value, _STATE_DICT.value, _OUT.value)
    print(f'bundle written to {_OUT.value}')
  else:
    if _EXPORT.value is None:
      raise app.UsageError('to-torch needs --export.')
    convert.bundle_to_reference(_EXPORT.value, _OUT.value)
    print(f'state_dict written to {_OUT.value}')


if __name__ == '__main__':
  cli.run_app(main)
