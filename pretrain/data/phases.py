"""Data phases: a schedule of source mixtures over training steps (Arctic-SnowCoder, Wei et
al. 2024: general code, then high-quality code, then synthetic data, in one run).

`data.phases` is a tuple of `(start_step, {source: weight})`, the first starting at step 0;
phase p feeds every step from its start to the next phase's. A phase mixes its sources with
grain's `MapDataset.mix` (deterministic interleaving in proportion to the weights) over
shuffled, repeated sources.

Why random access: example i of the run (global batch i // global_batch) is example
i - (first example of its phase) of that phase's mixture. Every example is a pure function
of (seed, i), so the iterator's state stays one number (global batches consumed), a resume
or a change of topology reproduces the same stream, and a phase switch lands exactly on its
step. A source in several phases continues in each where the earlier phases left it (its
mixture reads it from an offset: the count of its draws so far), so no example is replayed
before the source's epoch ends.
"""
from __future__ import annotations

import bisect
import functools
import json
import sys

import grain


def parse_phases(phases, valid_sources) -> tuple[tuple[int, dict[str, float]], ...]:
  """`data.phases` checked: ValueError naming the bad entry and what is valid."""
  if not phases:
    raise ValueError("data.source='phases' needs data.phases = ((0, {source: weight}), ...)")
  parsed = []
  for entry in phases:
    try:
      start, mixture = entry
      start, mixture = int(start), {str(k): float(v) for k, v in dict(mixture).items()}
    except (TypeError, ValueError):
      raise ValueError(f"data.phases entry {entry!r}: expected (start_step, {{source: "
                       "weight})") from None
    bad = sorted(set(mixture) - set(valid_sources))
    if not mixture or bad:
      raise ValueError(f"data.phases entry {entry!r}: sources {bad or '(none)'}; valid: "
                       f"{', '.join(valid_sources)}")
    if min(mixture.values()) <= 0:
      raise ValueError(f"data.phases entry {entry!r}: weights must be > 0")
    parsed.append((start, mixture))
  starts = [s for s, _ in parsed]
  if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
    raise ValueError(f"data.phases start steps {starts}: must begin at 0 and increase")
  return tuple(parsed)


class PhasedSource:
  """Packed rows per source plus the phase schedule that mixes them."""

  def __init__(self, phases, sources: dict):
    self.phases, self.sources = phases, sources

  def __len__(self) -> int:
    return sum(len(s) for s in self.sources.values())

  def settings(self) -> dict:
    """What must match for an iterator state to restore (JSON, as checkpoints store it)."""
    return {"phases": json.loads(json.dumps(self.phases)),
            "num_examples": {k: len(v) for k, v in sorted(self.sources.items())}}

  def dataset(self, seed: int, global_batch: int, shuffle: bool) -> grain.MapDataset:
    """The run's infinite example stream (see the module doc)."""
    parts = {}
    for k, name in enumerate(sorted(self.sources)):
      ds = grain.MapDataset.source(self.sources[name]).seed(seed + k)
      parts[name] = (ds.shuffle() if shuffle else ds).repeat()
    first_example = [start * global_batch for start, _ in self.phases]
    drawn = dict.fromkeys(self.sources, 0)  # Examples of each source used by earlier phases.
    mixtures = []
    for p, (_, mixture) in enumerate(self.phases):
      names = sorted(mixture)
      mixtures.append(grain.MapDataset.mix([parts[n][drawn[n]:] for n in names],
                                           [mixture[n] for n in names]))
      if p + 1 < len(self.phases):
        for name, count in _draws(mixture, first_example[p + 1] - first_example[p]).items():
          drawn[name] += count

    def example(i: int):
      p = bisect.bisect_right(first_example, i) - 1
      return mixtures[p][i - first_example[p]]

    return grain.MapDataset.range(sys.maxsize).seed(seed).map(example)


def _tag(source: int, index: int) -> tuple[int, int]:
  return source, index


def _draws(mixture: dict[str, float], num: int) -> dict[str, int]:
  """How many of the first `num` examples of grain's mix of `mixture` come from each
  source: the index each source is at in the first examples drawn from it at or after
  `num` (a few steps past `num` at most, for weights that are not tiny)."""
  names = sorted(mixture)
  indices = grain.MapDataset.mix(
      [grain.MapDataset.range(sys.maxsize).map(functools.partial(_tag, k))
       for k in range(len(names))], [mixture[n] for n in names])
  counts, i = {}, num
  while len(counts) < len(names):
    k, index = indices[i]
    counts.setdefault(names[k], index)
    i += 1
  return counts
