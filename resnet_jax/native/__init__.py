"""The native extension: oneDNN convolutions for XLA:CPU (onednn_conv.cc; build.py)."""
