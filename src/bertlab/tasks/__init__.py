"""The tasks bertlab trains: one module each (its model, LightningModule, data, metrics, decoding
and export), found by the commands through the ``_target_`` of ``conf/task/<name>.yaml``.
:mod:`bertlab.tasks.base` is the interface they implement."""
