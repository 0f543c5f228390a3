"""resnet_jax: plain and residual networks of any depth, trained by one pure JAX step."""

import os

# TensorFlow only feeds tf.data here: keep its C++ start-up notices (the oneDNN one, twice
# per process) off the run's output. Set before any TensorFlow import; a user's own win.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
