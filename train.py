"""Trains a model described by an ml-collections config: `python -m gmm_vit_jax.train`.

    python train.py --config=configs/gmm_vit_cifar10.py --workdir=runs/gmm_vit_cifar10
    python train.py --config=configs/gmm_vit_cifar10.py:cifar100 --config.batch_size=256

Flags, resuming and exit codes: gmm_vit_jax/train.py.
"""

from gmm_vit_jax import train

if __name__ == '__main__':
  train.run()
