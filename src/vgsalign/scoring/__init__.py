"""Alignment (AS) and glancing (GS) scores of alignment tensors T.

Modules:

- ``engine``: the scores, computed exactly at the tensor's own resolution.
- ``reference``: the slow upsample-then-sum definition the engine is tested against.
- ``baseline``: the seeded random T.
- ``bootstrap``: per-category means, totals and their confidence intervals.
- ``confusion``: words scored against the other objects of their image.
- ``stream``: the streaming pass over tensor batches (mask pixel counts, per-pair scores).
- ``stage``: the stage entry points, reading their inputs and collecting the results.
"""
