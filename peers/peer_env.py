"""What a peer program records of the process it ran in: Python, the cores, the
environment variables that choose kernels and threads, and which modules of this project
it imported (none, when it runs as its users run it). The peers beside this file import it
as a script's neighbour (their folder is on sys.path); it imports nothing of resnet_jax."""

import os
import platform
import sys

# Variables that change a framework's kernels or thread counts.
PREFIXES = ('OMP_', 'MKL_', 'KMP_', 'GOMP_', 'TF_ENABLE_', 'TF_CPP_', 'TF_NUM_', 'TF_XLA_',
            'ONEDNN_', 'DNNL_', 'OPENBLAS_', 'TORCH_', 'XLA_', 'JAX_',
            'CUDA_VISIBLE_DEVICES')
PROJECT_PACKAGES = ('resnet_jax', 'experiments', 'configs')
# The variables the process started with, read before any framework is imported (Keras
# imports JAX where it is installed, and JAX sets TF_CPP_MIN_LOG_LEVEL).
STARTED_WITH = {k: v for k, v in sorted(os.environ.items()) if k.startswith(PREFIXES)}


def describe(**framework) -> dict:
  """This process as a peer ran in it; `framework`: its versions and threads."""
  return {'python': platform.python_version(), 'cpu_count': os.cpu_count(),
          'variables': STARTED_WITH,
          'project_modules': sorted(m for m in sys.modules
                                    if m.split('.')[0] in PROJECT_PACKAGES),
          **framework}
