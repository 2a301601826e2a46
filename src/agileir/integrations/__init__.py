"""Optional bridges to other libraries; each submodule imports its library only when imported itself.

- :mod:`agileir.integrations.spandrel`: load agileir weights through spandrel (chaiNNer, ComfyUI)
  after one call to ``agileir.integrations.spandrel.register()``.
"""
