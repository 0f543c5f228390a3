"""resnet_jax: plain and residual networks of any depth, trained by one pure JAX step."""

import os

from resnet_jax import huge_pages

# The environment as this process found it, before the package's own settings below (and
# without the huge pages the single-run command line restarted itself with): what
# a peer program of the benchmark inherits (resnet_jax/peer_process.py), so that nothing of
# this project reaches it.
USER_ENVIRONMENT = huge_pages.without_ours(os.environ)

# TensorFlow only feeds tf.data here: keep its C++ start-up notices off the run's output.
# Set before any TensorFlow import; a user's own setting wins.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
