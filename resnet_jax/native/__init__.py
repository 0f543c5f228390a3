"""The native extension: oneDNN's convolutions and BatchNorm for XLA:CPU (onednn_conv.cc,
onednn_norm.cc; build.py builds it, extension.py loads it)."""
