"""Building and judging the built-in models; nothing here is loaded by a pipeline run.

Modules:

- ``world``: the procedural caption/image world of shapes (captions parse back to scenes).
- ``adherence``: whether an image shows its caption, judged from the pixels alone.
- ``train_world``: trains and evaluates ``shapes-sd`` and ``shapes-clip``
  (``python -m training.train_world``).
- ``train_gan``: trains and evaluates ``shapes-gan`` (``python -m training.train_gan``).
- ``distil``: distils ``shapes-sd`` into the one-pass ``shapes-turbo`` (``python -m training.distil``).

This package may import ``models`` (the runtime); ``models`` never imports it.
"""
