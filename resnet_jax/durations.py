"""Durations as the command lines print them: a run's ETA as a clock (1:02:03), a sweep's
or an analysis's in minutes, hours and days. One home, imported by every layer."""


def format_clock(seconds: float) -> str:
  """h:mm:ss, as a run's progress lines give its ETA."""
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def format_minutes(seconds: float) -> str:
  return f'{seconds / 60:.1f} min' if seconds < 7200 else f'{seconds / 3600:,.1f} h'


def format_duration(seconds: float) -> str:
  """format_minutes, with days beside hours past two days."""
  days = seconds / 86400
  return format_minutes(seconds) + (f' ({days:.1f} days)' if days > 2 else '')
