"""Every command in README.md and docs/*.md runs as written, or says here why it is not run.

The fenced ```bash blocks are read (continuation lines joined, comments dropped). Each
command is in exactly one of two lists: RUN, cheap commands this test runs for real, and
NOT_RUN, the others with the reason they are not run (a CIFAR download, a GPU, hours of
training, a usage form with placeholders). A command in neither list fails, and so does a
listed command that the docs no longer hold.

Every command, run or not, is also checked statically: the program (`python train.py`,
`python -m gmm_vit_jax.X`) exists; each of its `--flags` is one the program defines; a
`--config=FILE[:ARG]` file exists and builds, and each `--config.FIELD=...` names a field of
it. So a renamed flag, module, config file or field fails here even where the command is
too slow to run.
"""

import ast
import concurrent.futures
import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]

# Run for real by test_cheap_commands_run (a few seconds each on an idle 2-core CPU).
# fmt: off
RUN = (
    'python -m gmm_vit_jax.export --helpshort',
    'python -m gmm_vit_jax.lower --helpshort',
)

_PLACEHOLDERS = 'a usage form with placeholders in brackets, not a command to paste'
_QUICKSTART = ('the quick start: creates a virtual environment and installs requirements.txt '
               'from PyPI, then trains for about a minute; tests/test_training.py trains '
               'configs/quickstart.py shrunk')
_TRAINED_RUN = 'needs runs/quickstart, a trained quick start (about a minute of training)'
_CIFAR = 'downloads CIFAR or SVHN through tfds (no network here) and trains for hours on a GPU'
NOT_RUN = {
    # README.md
    'python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt && '
    'python train.py --config=configs/quickstart.py --workdir=runs/quickstart': _QUICKSTART,
    'python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements-dev.txt && '
    'python -m pytest -q -n 2 tests':
        'creates a virtual environment, installs from PyPI and runs the whole suite (minutes)',
    'python -m gmm_vit_jax.export --workdir=runs/quickstart --out=exported/quickstart':
        _TRAINED_RUN,
    'python train.py --config=configs/gmm_vit_cifar10.py --workdir=runs/gmm_vit_cifar10': _CIFAR,
    'python train.py --config=configs/gmm_vit_cifar10.py:cifar100 '
    '--workdir=runs/gmm_vit_cifar100': _CIFAR,
    'python train.py --config=configs/gmm_vit_cifar10.py:svhn_cropped '
    '--workdir=runs/gmm_vit_svhn': _CIFAR,
    'python train.py --config=configs/vit_cifar10.py --workdir=runs/vit_cifar10': _CIFAR,
    'python -m gmm_vit_jax.reproduce --table=gmm_paper --workdir=runs/paper':
        'trains the 40 runs of the published table: CIFAR downloads and days of GPU time',
    'python -m gmm_vit_jax.complexity $(for m in vit swin cait pit t2t hatnet; do echo '
    '--config=configs/${m}_cifar10.py --config=configs/gmm_${m}_cifar10.py; done) --markdown':
        'traces twelve full-size models (minutes on a CPU); tests/test_complexity.py checks '
        'rows of it',
    # docs/datasets.md
    'tfds build imagenet2012 --data_dir=DIR --file_format=array_record':
        'needs the ILSVRC-2012 tar files (150 GB) in DIR',
    'python train.py --config=configs/gmm_vit_imagenet.py --workdir=gs://BUCKET/gmm_vit_imagenet '
    '--config.dataset.data_dir=DIR': 'needs ImageNet and a bucket; days on a TPU slice',
    'python train.py --config=configs/hatnet_imagenet.py:tiny,gmm --workdir=runs/gmm_hatnet_tiny '
    '--config.dataset.data_dir=DIR --config.batch_size=256 --config.grad_accum_steps=4':
        'needs ImageNet; days on a GPU',
    'python -m gmm_vit_jax.benchmarks.pipeline --config=configs/quickstart.py --json':
        'a benchmark: a minute of timed steps',
    'python -m gmm_vit_jax.benchmarks.pipeline --config=configs/quickstart.py --json '
    '--grain_workers=2': 'a benchmark: a minute of timed steps, two worker processes',
    'python -m gmm_vit_jax.benchmarks.speed --config=configs/quickstart.py --json':
        'a benchmark: a minute of timed steps; tests/test_benchmark.py runs it small',
    # docs/export.md
    'python -m gmm_vit_jax.export --workdir=runs/quickstart --out=exported/quickstart '
    '[--step=best|latest|N]': _PLACEHOLDERS,
    'python -m gmm_vit_jax.predict --export=exported/quickstart digit.png [more.png ...] '
    '[--invert]': _PLACEHOLDERS,
    'python -m gmm_vit_jax.convert torch-reference --config=configs/gmm_vit_cifar10.py '
    '--state_dict=model.pth --out=exported/ref':
        'needs a reference PyTorch checkpoint, model.pth; tests/test_convert.py converts '
        'twins of it',
    'python -m gmm_vit_jax.convert to-torch --export=exported/ref --out=back.pth':
        'needs the bundle the command before writes',
    # docs/cpu_speed.md
    'python -m gmm_vit_jax.benchmarks.reference_speed '
    '--reference_dir=../Gaussian-Mixture-Mask-Attention --backbones=vit,swin,cait,pit,t2t '
    '--batch_size=128 --steps=5 --rounds=2':
        'needs a checkout of the reference repository; tests/test_reference_speed.py runs it '
        'small on a stand-in',
    'python -m gmm_vit_jax.benchmarks.step_profile --config=configs/gmm_vit_cifar10.py '
    '--batch_size=128 --steps=2 --top=3':
        'a benchmark: minutes of full-size steps on both sides; tests/test_step_profile.py '
        'runs it small',
    'python -m gmm_vit_jax.benchmarks.xla_options --config=configs/gmm_vit_cifar10.py '
    '--options=xla_cpu_prefer_vector_width=512 --options=xla_cpu_use_onednn=true':
        'a benchmark: three compilations and minutes of full-size steps; '
        'tests/test_step_profile.py runs it small',
    # docs/speed.md
    'python -m gmm_vit_jax.benchmarks.speed --config=configs/gmm_vit_cifar10.py '
    '[--batch_size=N] [--steps=N] [--json]': _PLACEHOLDERS,
    'python -m gmm_vit_jax.benchmarks.torch_compare --config=configs/gmm_vit_cifar10.py '
    '[--dtype=bfloat16] [--torch_compile]': _PLACEHOLDERS,
    'python -m gmm_vit_jax.benchmarks.levers --config=configs/gmm_vit_cifar10.py':
        'a benchmark: minutes of full-size CIFAR steps',
    'python -m gmm_vit_jax.benchmarks.ops': 'a benchmark: a minute of timed ops',
    'python -m gmm_vit_jax.benchmarks.augment --config=configs/gmm_vit_cifar10.py':
        'a benchmark: a minute of timed augmentation',
    'python -m gmm_vit_jax.lower --config=configs/gmm_vit_cifar10.py --platform=cuda '
    '[--batch_size=N] [--config.model.dtype=bfloat16]': _PLACEHOLDERS,
    'python -m gmm_vit_jax.lower --config=configs/vit_cifar10.py --platform=cuda '
    '--config.model.dtype=bfloat16': 'lowers a full-size model (a minute or more on a CPU); '
                                     'tests/test_lower.py lowers every config shrunk',
    'python -m gmm_vit_jax.lower --config=configs/swin_cifar10.py --platform=cuda '
    '--config.model.dtype=bfloat16': 'lowers a full-size model (a minute or more on a CPU); '
                                     'tests/test_lower.py lowers every config shrunk',
    'python -m gmm_vit_jax.lower --config=configs/gmm_vit_cifar10.py --platform=tpu':
        'lowers a full-size model (a minute or more on a CPU); tests/test_lower.py lowers '
        'every config shrunk',
    'python -m gmm_vit_jax.benchmarks.accelerator_check --out=accelerator_check.json':
        'needs a GPU or TPU, installs jax[cuda13], runs ten minutes; '
        'tests/test_accelerator_check.py runs its --cheap form',
    # docs/training.md
    'python train.py --helpshort': 'imports TensorFlow and the whole trainer (tens of seconds '
                                   'on a loaded CPU); test_flags_exist checks its flags',
    'python train.py --config=configs/quickstart.py --workdir=runs/quickstart':
        'the quick start, about a minute of training; tests/test_training.py trains '
        'configs/quickstart.py shrunk',
    "python train.py --config=configs/quickstart.py --workdir=runs/quickstart_finetuned "
    "--config.init_from=runs/quickstart --config.init_from_dont_load=('head\\..*',) "
    "--config.epochs=10 --config.schedule.warmup_epochs=1 --config.optimizer.learning_rate=1e-4":
        'needs the quick start run; tests/test_init_from.py fine-tunes a tiny one',
    'python train.py --config=configs/gmm_vit_cifar10.py:tiny_imagenet --workdir=runs/ft_tiny '
    '--config.dataset.data_dir=tiny-imagenet-200 --config.init_from=exported/gmm_vit_cifar100':
        'needs the Tiny-ImageNet download and a CIFAR-100 bundle; hours on a GPU',
    'python -m gmm_vit_jax.reproduce --table=gmm_paper --workdir=runs/paper '
    '[--datasets=cifar10,cifar100,svhn_cropped,tiny_imagenet] [--backbones=vit,swin,cait,pit,t2t] '
    '[--data_dir=DIR] [--configs=configs]': _PLACEHOLDERS,
}

NOT_RUN.update({
    # README.md
    'python -m gmm_vit_jax.evaluate --workdir=runs/quickstart --json': _TRAINED_RUN,
    'python train.py --config=configs/quickstart.py --config.dataset.name=image_folder '
    '--config.dataset.data_dir=DIR --config.dataset.image_size=32 --workdir=runs/my_images':
        'needs a folder of your images in DIR; tests/test_image_folder.py trains the digits '
        'written as one',
    'python train.py --config=configs/quickstart.py --workdir=gs://BUCKET/quickstart':
        'needs a bucket; tests/test_storage.py trains the quick start into one on a local '
        'emulator',
    # docs/evaluate.md
    'python -m gmm_vit_jax.evaluate --export=exported/quickstart --split=test':
        'needs the bundle the quick start exports; tests/test_evaluate.py evaluates a bundle',
    # docs/own_images.md
    'python train.py --config=configs/quickstart.py --config.dataset.name=image_folder '
    '--config.dataset.data_dir=DIR --config.dataset.image_size=32 --workdir=runs/mine':
        'needs a folder of your images in DIR; tests/test_image_folder.py trains the digits '
        'written as one',
    "python - <<EOF": 'writes 1,797 PNG files into the working directory; '
                      'tests/test_image_folder.py writes the same folder in a temporary one',
    'python train.py --config=configs/quickstart.py --config.dataset.name=image_folder '
    '--config.dataset.data_dir=digits_png --config.dataset.image_size=8 '
    '--workdir=runs/digits_png': 'a minute of training on the folder the command before '
                                 'writes; tests/test_image_folder.py runs it',
    'python -m gmm_vit_jax.export --workdir=runs/digits_png --out=bundles/digits_png':
        'needs the run the command before trains; tests/test_image_folder.py exports it',
    'python -m gmm_vit_jax.predict --export=bundles/digits_png '
    'digits_png/test/7/$(ls digits_png/test/7 | head -1)':
        'needs the bundle the command before writes; tests/test_image_folder.py predicts '
        'with it',
    'python train.py --config=configs/quickstart.py --config.dataset.name=tfds:mnist '
    '--config.dataset.image_size=8 --workdir=runs/mnist_8x8':
        'downloads MNIST through tfds (no network here); tests/test_image_folder.py reads '
        'tfds mock data by name',
    # docs/package.md
    'pip install .': 'installs into the current environment; tests/test_package.py installs '
                     'the wheel into a fresh one',
    'pip install .[torch]': 'installs PyTorch from PyPI (gigabytes)',
    "pip install git+https://<the repository's URL>": _PLACEHOLDERS,
    'python -m gmm_vit_jax.train --config=path/to/gmm-vit-jax/configs/gmm_vit_cifar10.py':
        _PLACEHOLDERS,
    'python -m gmm_vit_jax.train --config=my_config.py --workdir=runs/mine': _PLACEHOLDERS,
    "python -m gmm_vit_jax.train --config=configs/gmm_vit_cifar10.py:cifar100 "
    "--workdir=runs/gmm_vit_cifar100_finetuned --config.init_from=runs/gmm_vit_cifar10 "
    "--config.init_from_dont_load=('head\\..*',) --config.optimizer.layer_decay=0.75": _CIFAR,
    # docs/precision.md
    'python -m gmm_vit_jax.lower --config=configs/gmm_vit_cifar10.py --platform=tpu '
    '--batch_size=8 --config.eval_batch_size=8 --config.model.depth=1':
        'lowers for a TPU (half a minute on a CPU); tests/test_lower.py lowers the same for '
        'TPU and reads its precision',
    # docs/results.md
    'python -m gmm_vit_jax.reproduce --workdir=runs/paper_digits_seeds --datasets=digits '
    '--shrink=quickstart_size --seeds=5':
        'fifty training runs, over an hour on 2 cores; tests/test_reproduce.py runs '
        '--seeds on tiny models',
})

# fmt: on

# absl's own flags, which every program takes.
ABSL_FLAGS = {
  'help',
  'helpshort',
  'helpfull',
  'helpxml',
  'verbosity',
  'v',
  'logtostderr',
  'alsologtostderr',
  'log_dir',
  'flagfile',
}


def bash_commands(text: str) -> list[str]:
  """The commands of the ```bash blocks of a Markdown text, one string each.

  Lines ending in a backslash continue; a '#' after whitespace starts a comment. shlex
  splits and rejoins each command, so quoting and spacing do not matter. A here-document
  (`python - <<'EOF'` to `EOF`) is one command, named by its first line.
  """
  commands = []
  for block in re.findall(r'^```bash\n(.*?)^```', text, re.M | re.S):
    lines = iter(block.replace('\\\n', ' ').splitlines())
    for line in lines:
      tokens = shlex.split(line, comments=True)
      if tokens:
        commands.append(' '.join(tokens))
      heredoc = re.search(r"<<-?\s*'?(\w+)'?\s*$", line)
      if heredoc:
        for body in lines:
          if body.strip() == heredoc.group(1):
            break
  return commands


def documented() -> dict[str, list[str]]:
  """{command: [pages it is on]} over README.md and docs/*.md."""
  found = {}
  for page in PAGES:
    for command in bash_commands(page.read_text()):
      found.setdefault(command, []).append(str(page.relative_to(ROOT)))
  return found


def test_every_command_is_run_or_listed_with_a_reason():
  commands = documented()
  unlisted = {c: pages for c, pages in commands.items() if c not in RUN and c not in NOT_RUN}
  assert not unlisted, (
    'commands in the docs that this test neither runs nor lists (add each '
    f'to RUN or NOT_RUN with the reason): {unlisted}'
  )
  stale = [c for c in (*RUN, *NOT_RUN) if c not in commands]
  assert not stale, f'listed commands the docs no longer hold: {stale}'
  assert not set(RUN) & set(NOT_RUN)


def test_a_changed_command_is_caught():
  """The extraction sees a command of a page exactly as a reader would paste it."""
  page = (
    'text\n```bash\npython train.py --config=a.py \\\n    --workdir=w   # why\n'
    "# a comment\nX=1 python -m m --f=\"('a\\..*',)\"\n```\n```python\nnot = 'bash'\n```\n"
  )
  assert bash_commands(page) == [
    'python train.py --config=a.py --workdir=w',
    "X=1 python -m m --f=('a\\..*',)",
  ]


def _program(tokens: list[str]) -> pathlib.Path | None:
  """The repository file a `python ...` command runs, or None for a program from elsewhere."""
  if tokens[1:2] == ['-m']:
    name = tokens[2]
    spec = importlib.util.find_spec(name.split('.')[0])
    if spec is None or not name.startswith('gmm_vit_jax'):
      return None
    path = ROOT.joinpath(*name.split('.'))
    main = path / '__main__.py'
    assert main.is_file() or path.with_suffix('.py').is_file(), f'no module {name}'
    return main if main.is_file() else path.with_suffix('.py')
  if tokens[1] == '-':  # A script on standard input (a here-document).
    return None
  path = ROOT / tokens[1]
  assert path.is_file(), f'no file {tokens[1]}'
  # train.py at the root only calls the package's command, which defines the flags.
  return ROOT / 'gmm_vit_jax' / 'train.py' if tokens[1] == 'train.py' else path


def _defined_flags(program: pathlib.Path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(program.read_text())):
    if (
      isinstance(node, ast.Call)
      and isinstance(node.func, ast.Attribute)
      and node.func.attr.startswith('DEFINE')
      and node.args
      and isinstance(node.args[0], ast.Constant)
    ):
      names.add(node.args[0].value)
  return names


def _load_config(spec: str):
  path, _, argument = spec.partition(':')
  assert (ROOT / path).is_file(), f'no config file {path}'
  sys.path.insert(0, str(ROOT))
  try:
    module_spec = importlib.util.spec_from_file_location('documented_config', ROOT / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  finally:
    sys.path.remove(str(ROOT))
  return module.get_config(argument) if argument else module.get_config()


def _python_parts(command: str):
  """The token lists of the `python ...` commands in a shell command line."""
  for part in command.split('&&'):
    tokens = shlex.split(part)
    while tokens and re.fullmatch(r'[A-Z_]+=.*', tokens[0]):  # Environment assignments.
      tokens = tokens[1:]
    if tokens and tokens[0] in ('python', 'python3'):
      yield [t.strip('[]') for t in tokens]


@pytest.mark.parametrize('command', sorted(documented()))
def test_flags_exist(command):
  if NOT_RUN.get(command) == _PLACEHOLDERS:  # Paths of the reader's, not the repository's.
    return
  for tokens in _python_parts(command):
    program = _program(tokens)
    if program is None:
      continue
    defined = _defined_flags(program) | ABSL_FLAGS
    config = None
    for token in tokens[2:]:
      if not token.startswith('--') or '$' in token:
        continue
      name, _, value = token[2:].partition('=')
      if name.startswith('config.'):
        assert config is not None, f'{token} without a --config before it'
        node = config
        for field in name.split('.')[1:]:
          assert field in node, f'{token}: the config has no field {field!r}'
          node = node[field]
        continue
      assert name in defined, f'{program.relative_to(ROOT)} defines no flag --{name}'
      if name == 'config':
        config = _load_config(value)


def _run(command: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run(
    shlex.split(command), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )


def test_cheap_commands_run():
  with concurrent.futures.ThreadPoolExecutor(len(RUN)) as pool:
    results = dict(zip(RUN, pool.map(_run, RUN)))
  for command, result in results.items():
    # absl's --helpshort exits 1 after printing the help; anything else is a failure.
    assert result.returncode in (0, 1) and 'Traceback' not in result.stderr, (
      f'{command}: exit {result.returncode}\n{result.stderr[-2000:]}'
    )
    program = _program(shlex.split(command))
    missing = [f for f in _defined_flags(program) if f'--{f}' not in result.stdout]
    assert not missing, f'{command} did not describe {missing}:\n{result.stdout[-2000:]}'


@pytest.mark.parametrize(
  'command, problem',
  [
    (
      'python train.py --config=configs/quickstart.py --config.optimzer.learning_rate=1',
      "no field 'optimzer'",
    ),
    ('python -m gmm_vit_jax.export --wrkdir=runs/x', 'defines no flag --wrkdir'),
    ('python -m gmm_vit_jax.exprt --workdir=runs/x', 'no module gmm_vit_jax.exprt'),
    ('python train.py --config=configs/nothing.py', 'no config file configs/nothing.py'),
  ],
)
def test_a_wrong_command_is_caught(command, problem):
  with pytest.raises(AssertionError, match=re.escape(problem)):
    test_flags_exist(command)
