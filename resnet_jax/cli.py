"""The command lines' flag parsing: a bad config file or override ends in one line.

The --config file and every --config.KEY=VALUE override are checked here, before absl
and ml_collections parse them (the same file, loaded the same way): a missing or
unreadable file, one without get_config, a bad config argument, a key the config lacks
or a value of the wrong type each end in one sentence naming the flag, never in the
text of another library's exception.
"""

import difflib
import importlib.util
import os
import sys

from absl import flags

from resnet_jax import config_lib

# What a --config.KEY=VALUE must give, by the type of the key's value in the config, and
# absl's parser of that type (the one ml_collections' overrides use).
_TYPE_WORDS = {int: 'a whole number', float: 'a number', bool: 'true or false'}
_PARSERS = {int: flags.IntegerParser(), float: flags.FloatParser(),
            bool: flags.BooleanParser()}


class FlagError(ValueError):
  """A --config flag that cannot work: its one-line message."""


def parse_flags(argv: list[str], aliases: dict[str, str] | None = None) -> list[str]:
  """absl's flag parsing (`app.run(main, flags_parser=...)`) after `check_config_flags`;
  `aliases` ({'--slurm.': '--config.slurm.'}) are prefixes short for others."""
  for short, full in (aliases or {}).items():
    argv = [full + a[len(short):] if a.startswith(short) else a for a in argv]
  sys.argv[1:] = argv[1:]  # ml_collections reads its overrides from sys.argv too.
  try:
    check_config_flags(argv)
  except FlagError as e:
    sys.exit(f'error: {e}')
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:  # absl's own errors: its text, as absl prints it.
    sys.exit(f'FATAL Flags parsing error: {error}\n'
             'Pass --helpshort or --helpfull to see help on flags.')


def refuse_arguments(argv: list[str]) -> None:
  """Words that are not flags (`--models a b`: the `b`) are refused, not silently dropped."""
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {" ".join(argv[1:])!r}: flags take one value each '
             '(--flag=VALUE), and lists are comma-separated (--models=a,b).')


def _flag_values(argv: list[str], prefix: str) -> list[tuple[str, str | None]]:
  """(flag, value) of each flag in `argv` starting with `prefix`, in either form
  (--flag=VALUE, --flag VALUE); None for a bare flag followed by another flag or nothing."""
  out = []
  for i, a in enumerate(argv[1:], 1):
    if not a.startswith(prefix):
      continue
    name, eq, value = a.partition('=')
    if not eq:
      value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith('-') else None
    out.append((name, value))
  return out


def check_config_flags(argv: list[str]):
  """Loads the --config file as ml_collections will and checks it and every override;
  raises FlagError naming the flag and the fix."""
  given = [(f, v) for f, v in _flag_values(argv, '--config') if f == '--config']
  if not given or given[-1][1] is None:
    return  # No config named: the command line says so itself.
  value = given[-1][1]
  path, _, arg = value.partition(':')
  config = _load_config(path, arg, value)
  for flag, override in _flag_values(argv, '--config.'):
    _check_override(config, flag, override)


def _load_config(path: str, arg: str, value: str):
  if not os.path.isfile(path):
    shipped = config_lib.CONFIG_DIR
    names = sorted(n for n in os.listdir(shipped) if n.endswith('.py')) \
        if os.path.isdir(shipped) else []
    raise FlagError(
        f'--config: there is no config file {path!r} (relative paths start at '
        f'{os.getcwd()}); name one such as '
        f'{", ".join(os.path.join(shipped, n) for n in names) or "configs/NAME.py"}.')
  if not os.access(path, os.R_OK):
    raise FlagError(f'--config: the config file {path!r} cannot be read (permission '
                    'denied); check its permissions.')
  spec = importlib.util.spec_from_file_location('resnet_jax_checked_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)  # A config file's own bug: its traceback helps.
  if not callable(getattr(module, 'get_config', None)):
    raise FlagError(f'--config: {path!r} has no get_config(arg) function; a config file '
                    'returns its ConfigDict from one (see configs/).')
  try:
    return module.get_config(arg) if arg else module.get_config()
  except (ValueError, config_lib.ConfigError) as e:
    raise FlagError(f'--config={value}: {e}') from e


def _check_override(config, flag: str, value: str | None):
  """A --config.KEY override: KEY must be a key of `config`, VALUE of its type."""
  path = flag[len('--config.'):]
  *parents, leaf = path.split('.')
  node = config
  for i, part in enumerate(parents + [leaf]):
    keys = list(node.keys()) if hasattr(node, 'keys') else []
    if part not in keys:
      close = difflib.get_close_matches(part, keys, n=1)
      hint = f' (Did you mean "{close[0]}"?)' if close else ''
      raise FlagError(f'{flag} sets a key the config does not have{hint}; check its '
                      'spelling against the config file (the command line can change the '
                      'keys a config has, not add new ones).')
    if i < len(parents):
      node = node[part]
  now = node[leaf]
  try:
    kind = node.get_ref(leaf).get_type()
  except (AttributeError, TypeError, ValueError):  # A whole sub-config: absl's to refuse.
    return
  parser = _PARSERS.get(kind)
  if parser is None or value is None:
    return  # Strings, tuples and bare booleans: absl takes them as they are.
  try:
    parser.parse(value)
  except ValueError:
    if isinstance(now, tuple):
      now = ','.join(map(str, now))
    has = f' (the config has {now})' if now is not None else ''
    raise FlagError(f'{flag}={value}: {path} takes {_TYPE_WORDS[kind]}{has}.') from None
