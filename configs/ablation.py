"""The depth ablation of He et al. 2016 (section 4.2): depth x {plain, residual} x seeds.

python -m experiments.depth_ablation --config=configs/ablation.py:quick --workdir=runs/ablation
Presets (the argument):
  quick    Fashion-MNIST offline, width-8 nets, 300 steps: a budget of minutes on 2 CPU
           cores.
  full     Fashion-MNIST at full width, 20 epochs after a one-epoch warm-up: aimed at
           deeper residual nets winning; at 20 epochs ResNet-56 reaches a lower
           training error than ResNet-20 but ties on held-out images
           (docs/full_preset.md); about 22 h on 2 AVX-512 CPU cores, 39 h on AVX2.
  paper    CIFAR-10 exactly as the paper (configs/cifar10.py), 5 seeds.
  extreme  ResNet-1202 and plain-110 on CIFAR-10.
  imagenet Plain-18/34 against ResNet-18/34 (option A) on ImageNet, the paper's Figure 4
           and Table 2, with the recipe of configs/imagenet_resnet50.py.
  normalisation
           Is it the skip, the normalisation or the initialisation? The quick preset's
           recipe at depths 20 and 56 for every variant (resnet_jax/model_variants.py):
           plain and residual nets with BatchNorm and without, SkipInit and Fixup
           residual nets, TAT plain nets; 28 runs (their time on 2 CPU cores:
           docs/normalisation.md).
  normalisation_full
           The same grid at the full preset's length and width, for an accelerator.
Each cell is an ordinary run of `run_config` called with 'depth=N[,plain|,shortcut=X]',
then updated with `overrides`, whose every run key can be set from the command line:
--config.overrides.data.name=cifar100 runs the grid on another data set.
"""

import ml_collections

from resnet_jax.sweep import ablation as sweep_ablation

PRESETS = ('quick', 'full', 'paper', 'extreme', 'imagenet', 'normalisation',
           'normalisation_full')
# The normalisation presets' nets: the paper's and every one without BatchNorm.
ALL_VARIANTS = ('bn', 'nonorm', 'skipinit', 'fixup', 'tat')


def get_config(arg: str = 'quick'):
  preset = arg or 'quick'
  if preset not in PRESETS:
    raise ValueError(f'Unknown ablation preset {preset!r}: use one of {", ".join(PRESETS)}.')
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.shortcuts = ('none', 'A')  # 'none' is the plain net; add 'B' or 'C' to compare options.
  # 'bn' is the paper's nets; the others take BatchNorm out (resnet_jax/model_variants.py:
  # nonorm, skipinit, fixup, tat), each crossed with the shortcuts it makes a net with.
  c.variants = ('bn',)
  c.analysis_examples = 256  # Held-out images for the layer-response and gradient figures.
  c.paper_table = ''  # The paper's errors beside ours: 'cifar10' (Table 6), 'imagenet' (Table 2).
  c.exclude = ()  # Cells to leave out: 'SHORTCUT-DEPTH' ('none-1202'), 'SHORTCUT+VARIANT-DEPTH'.
  # Each unit's task under --launcher=slurm (docs/cluster.md); --slurm.KEY=VALUE is short
  # for --config.slurm.KEY=VALUE. mem_gb 0 and partition '' take the cluster's defaults;
  # sbatch_options are further sbatch flags ('--qos=high --account=lab'), setup a shell
  # line run before each task ('module load cuda/12.4').
  c.slurm = ml_collections.ConfigDict({
      'partition': '', 'nodes': 1, 'tasks_per_node': 1, 'gpus_per_task': 0,
      'cpus_per_task': 2, 'mem_gb': 0.0, 'timeout_min': 60, 'array_parallelism': 64,
      'max_requeues': 3, 'signal_delay_s': 120, 'sbatch_options': '', 'setup': '',
      'poll_seconds': 10.0,
  })
  if preset in ('quick', 'normalisation'):
    c.run_config = 'fashion_mnist.py'
    c.depths = (20, 32, 44, 56) if preset == 'quick' else (20, 56)
    c.seeds = (0, 1)
    if preset == 'normalisation':
      # One recipe for every net, the quick preset's, as written below: no variant tuned.
      c.variants = ALL_VARIANTS
    # 300 steps of batch 128 (0.65 of an epoch), so that the 16 runs fit in 20 minutes
    # on 2 CPU cores with the set-up (docs/ablation_quick/): enough for plain nets to
    # degrade
    # with depth while plain-20 and ResNet-20 train about level (see the README; the
    # search: docs/ablation_quick/README.md).
    c.overrides = sweep_ablation.sweep_overrides({
        # Unrolled: at these depths XLA:CPU runs the unrolled stages' step faster than
        # the scanned ones, for a little more compiling (docs/performance.md).
        'model': {'num_filters': 8, 'scan_blocks': False},
        'data': {'augment': 'none', 'validation_size': 1000},
        # A 30-step linear warm-up: with the ordinary classifier the deep residual nets
        # start at a loss of 3 to 4, and a shorter warm-up let some stall after an early
        # loss spike; learning rates 0.05 and 0.2 and warm-ups of 15 and 60 steps trained
        # no better (docs/ablation_quick/README.md).
        'optimizer': {'learning_rate': 0.1, 'nesterov': False, 'weight_decay': 1e-4,
                      'warmup_steps': 30},
        'batch_size': 128, 'num_train_steps': 300, 'log_every_steps': 10,
        'eval_every_steps': 50, 'checkpoint_every_steps': 50, 'eval_batch_size': 1000,
    })
  elif preset in ('full', 'normalisation_full'):
    c.run_config = 'fashion_mnist.py'
    c.depths = (20, 32, 44, 56) if preset == 'full' else (20, 56, 110)
    c.seeds = (0, 1)
    if preset == 'normalisation_full':
      c.variants = ALL_VARIANTS
    c.overrides = sweep_ablation.sweep_overrides({
        'model': {'scan_blocks': True},
        'data': {'augment': 'crop_flip', 'pad': 2},
        # A linear warm-up over the first epoch (429 steps): without it ResNet-56's
        # weights grow at lr 0.1, slowing it, and it trails ResNet-20 (docs/full_preset.md).
        'optimizer': {'learning_rate': 0.1, 'nesterov': False, 'weight_decay': 1e-4,
                      'warmup_steps': 429},
        'batch_size': 128, 'num_epochs': 20.0, 'log_every_steps': 100,
        'eval_every_steps': 1000, 'checkpoint_every_steps': 1000,
    })
  elif preset == 'paper':
    c.run_config = 'cifar10.py'
    c.depths = (20, 32, 44, 56, 110)
    c.seeds = (0, 1, 2, 3, 4)
    c.paper_table = 'cifar10'
    c.overrides = sweep_ablation.sweep_overrides({'log_every_steps': 200})
    # A GPU a cell; a task past 8 hours checkpoints and is requeued (max_requeues).
    c.slurm.update({'gpus_per_task': 1, 'cpus_per_task': 8, 'mem_gb': 32.0,
                    'timeout_min': 8 * 60})
  elif preset == 'extreme':
    c.run_config = 'cifar10.py'
    c.depths = (110, 1202)
    c.seeds = (0,)
    c.exclude = ('none-1202',)
    c.paper_table = 'cifar10'
    c.overrides = sweep_ablation.sweep_overrides({'model': {'remat': True},
                                             'log_every_steps': 200})
    c.slurm.update({'gpus_per_task': 1, 'cpus_per_task': 8, 'mem_gb': 64.0,
                    'timeout_min': 24 * 60})
  else:  # imagenet
    # Section 4.1: the 18- and 34-layer nets, plain and with option A shortcuts (the
    # paper's Figure 4 and Table 2), trained by configs/imagenet_resnet50.py's recipe
    # (batch 1024, 90 epochs, cosine after a 5-epoch warm-up, bfloat16), not the paper's
    # (batch 256, 600k steps, lr /10 on plateaus, scale augmentation): the comparison of
    # depths, not the paper's errors to the digit. No zero-initialised last BN (the paper
    # had none, and plain nets cannot have it). Needs ILSVRC2012 in the TFDS manual dir:
    # --config.overrides.data.manual_dir=DIR.
    c.run_config = 'imagenet_resnet50.py'
    c.depths = (18, 34)
    c.seeds = (0,)
    c.paper_table = 'imagenet'
    c.overrides = sweep_ablation.sweep_overrides({
        'model': {'zero_init_last_bn': False},
        'batch_size': 1024, 'num_epochs': 90.0, 'log_every_steps': 100,
    })
    # Two 8-GPU nodes a cell, one process a node joined by jax.distributed.
    c.slurm.update({'nodes': 2, 'tasks_per_node': 1, 'gpus_per_task': 8,
                    'cpus_per_task': 64, 'mem_gb': 400.0, 'timeout_min': 48 * 60})
  return c
