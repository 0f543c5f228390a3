"""The command lines' flag parsing: a bad config file or override ends in one line."""

import os
import re
import sys

from absl import flags

from resnet_jax import config_lib


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (`app.run(main, flags_parser=...)`), where a missing config file,
  a bad config argument or an override of a key the config lacks ends in one line."""
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as error:  # absl's own errors, and a config file's ValueError.
    sys.exit(_flag_error_message(str(error)))
  except OSError as error:  # An override applied to a config file that could not be loaded.
    _exit_if_config_file_unreadable(_config_path(argv), error)
    raise
  except AttributeError as error:
    if "has no attribute 'get_config'" in str(error):
      sys.exit(f'error: --config: {_config_path(argv)!r} has no get_config(arg) function; a '
               'config file returns its ConfigDict from one (see configs/).')
    _exit_if_unknown_override(error, argv)
    raise  # Not an override's key (a config file's own bug, say): its traceback helps.
  except KeyError as error:  # What ml_collections raises for an unknown path.
    _exit_if_unknown_override(error, argv)
    raise
  if 'config' in flags.FLAGS and flags.FLAGS['config'].present:
    # ml_collections defers a config file's load error to the config's first use: it
    # stands in a placeholder holding the error.
    placeholder = vars(flags.FLAGS['config'].value) \
        if hasattr(flags.FLAGS['config'].value, '__dict__') else {}
    _exit_if_config_file_unreadable(_config_path(argv), placeholder.get('_error'))
  return remaining


def refuse_arguments(argv: list[str]) -> None:
  """Words that are not flags (`--models a b`: the `b`) are refused, not silently dropped."""
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {" ".join(argv[1:])!r}: flags take one value each '
             '(--flag=VALUE), and lists are comma-separated (--models=a,b).')


# What a --config.KEY=VALUE must give, by the type of the key's value in the config.
_TYPE_WORDS = {int: 'a whole number', float: 'a number', bool: 'true or false',
               str: 'a string', tuple: 'comma-separated values'}


def _override_type_error(message: str) -> str | None:
  """One line for a --config.KEY=VALUE whose value is not of the key's type (absl's own
  message names only the conversion that failed), or None if `message` is not one."""
  match = re.match(r'flag --config\.([\w.]+)=(.*?): ', message)
  if not match:
    return None
  path, value = match.groups()
  try:
    node = flags.FLAGS['config'].value
    *parents, leaf = path.split('.')
    for part in parents:
      node = node[part]
    kind, now = node.get_ref(leaf).get_type(), node[leaf]
  except (AttributeError, KeyError, TypeError):  # No config to look in: absl's text.
    return None
  if kind not in _TYPE_WORDS:
    return None
  if isinstance(now, tuple):
    now = ','.join(map(str, now))
  example = f' (the config has {now})' if now is not None else ''
  return f'error: --config.{path}={value}: {path} takes {_TYPE_WORDS[kind]}{example}.'


def _flag_error_message(message: str) -> str:
  """One line for a config file's ValueError (its argument, say) or an override of the
  wrong type; absl's text otherwise."""
  typed = _override_type_error(message)
  if typed:
    return typed
  flag = re.match(r'flag (--\S+): Error whilst parsing config file:', message)
  last = message.strip().splitlines()[-1].strip()
  error = re.match(r'(?:\w+\.)*(?:ValueError|ConfigError): (.*)', last)
  if flag and error:
    return f'error: {flag.group(1)}: {error.group(1)}'
  if '\n' in message:
    message = '\n' + '\n'.join('  ' + line for line in message.splitlines())
  return (f'FATAL Flags parsing error: {message}\n'
          'Pass --helpshort or --helpfull to see help on flags.')


def _config_path(argv) -> str:
  """The file named by --config in `argv` (without its ':ARGS')."""
  for i, a in enumerate(argv):
    if a.startswith('--config='):
      return a.split('=', 1)[1].split(':', 1)[0]
    if a == '--config' and i + 1 < len(argv):
      return argv[i + 1].split(':', 1)[0]
  return ''


def _exit_if_config_file_unreadable(path: str, error) -> None:
  """One line for a config file that could not be loaded: missing or unreadable."""
  if not isinstance(error, OSError) or not path:
    return
  if not os.path.isfile(path):
    shipped = config_lib.CONFIG_DIR
    names = sorted(n for n in os.listdir(shipped) if n.endswith('.py')) \
        if os.path.isdir(shipped) else []
    sys.exit(f'error: --config: there is no config file {path!r} (relative paths start at '
             f'{os.getcwd()}); name one such as '
             f'{", ".join(os.path.join(shipped, n) for n in names) or "configs/NAME.py"}.')
  reason = str(error).strip().splitlines()[-1].strip()
  sys.exit(f'error: --config: the config file {path!r} cannot be read ({reason}); check its '
           'permissions.')


def _exit_if_unknown_override(error, argv) -> None:
  """A `--config.KEY` override of a key the config lacks: one line naming the flag."""
  e = error
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]  # An AttributeError wraps the KeyError that names the key.
  message = str(e.args[0]) if e.args else ''
  found = re.search(r'lookup: (\S+)', message) or re.search(r"'([^'\s]+)'", message)
  key = found.group(1).split('.')[-1] if found else None
  named = [a.split('=')[0] for a in argv[1:]
           if re.match(r'--\w+\.', a) and key in a.split('=')[0].split('.')[1:]]
  if named:
    hint = re.search(r'Did you mean "[^"]+"', message)
    sys.exit(f'error: {" or ".join(named)} sets a key the config '
             f'does not have{" (" + hint.group(0) + "?)" if hint else ""}; check its spelling '
             'against the config file (the command line can change the keys a config has, '
             'not add new ones).')
