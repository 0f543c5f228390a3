"""Builds the oneDNN convolution extension: `python -m resnet_jax.native.build`.

Compiles onednn_conv.cc and onednn_norm.cc (the convolutions' and BatchNorm's handlers)
and norm_add_relu.cc (a residual block's BatchNorm, addition and ReLU, on OpenMP)
with the system's C++ compiler against jaxlib's FFI headers and the oneDNN of the
`onednn-cpu-gomp` / `onednn-devel-cpu-gomp` wheels (the `onednn` extra, installed by
`make setup` on Linux x86-64), into _onednn.so beside them. Where anything is missing it
says what and exits 0: runs then take `fast_conv` and Flax's BatchNorm instead
(resnet_jax/native/extension.py).
"""

import glob
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = [os.path.join(HERE, name)
           for name in ('onednn_conv.cc', 'onednn_norm.cc', 'norm_add_relu.cc')]
TARGET = os.path.join(HERE, '_onednn.so')


def _onednn_dirs() -> tuple[str, str] | None:
  """(include dir, lib dir) of the oneDNN wheels in this environment, or None."""
  for prefix in (sys.prefix, sysconfig.get_config_var('userbase') or ''):
    include, lib = os.path.join(prefix, 'include'), os.path.join(prefix, 'lib')
    if (os.path.exists(os.path.join(include, 'oneapi', 'dnnl', 'dnnl.hpp'))
        and glob.glob(os.path.join(lib, 'libdnnl.so*'))):
      return include, lib
  return None


def command() -> tuple[list[str] | None, str]:
  """The compiler command line, or None and why it cannot be built here."""
  if os.environ.get('CXX'):  # Split as a shell would: CXX="ccache g++" is two words.
    compiler = shlex.split(os.environ['CXX'])
    if not shutil.which(compiler[0]):
      return None, (f'the C++ compiler {compiler[0]!r} of CXX={os.environ["CXX"]!r} is '
                    'not found')
  else:
    found = shutil.which('g++') or shutil.which('c++')
    if not found:
      return None, 'no C++ compiler (g++ or c++; or set CXX)'
    compiler = [found]
  dirs = _onednn_dirs()
  if dirs is None:
    return None, (f'oneDNN\'s headers and library are not in {sys.prefix} (pip install '
                  "'.[onednn]' installs them on Linux x86-64)")
  import jax.ffi  # pylint: disable=import-outside-toplevel
  include, lib = dirs
  library = sorted(glob.glob(os.path.join(lib, 'libdnnl.so*')), key=len)[0]
  # -O3 vectorises norm_add_relu.cc's loops; -fopenmp runs them on oneDNN's OpenMP.
  return [*compiler, '-O3', '-std=c++17', '-shared', '-fPIC', '-fopenmp', '-w',
          '-I', jax.ffi.include_dir(), '-I', include, *SOURCES, '-o', TARGET,
          library, f'-Wl,-rpath,{lib}'], ''


def build() -> str | None:
  """Builds the extension; None, or why it was not built."""
  cmd, why = command()
  if cmd is None:
    return why
  try:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
  except OSError as e:  # The compiler went missing or cannot be run (permissions).
    return f'the compiler {cmd[0]!r} cannot be run ({e.strerror})'
  if out.returncode != 0:
    if os.path.exists(TARGET):
      os.remove(TARGET)
    return f'the compiler failed:\n{out.stderr[-3000:]}'
  return None


def main() -> int:
  why = build()
  if why is None:
    print(f'Built {TARGET}: runs with model.conv_impl=onednn take oneDNN\'s convolutions '
          'and BatchNorm.')
    return 0
  print(f'The oneDNN extension was not built: {why}. Runs take fast_conv instead.')
  return 0


if __name__ == '__main__':
  sys.exit(main())
