"""Training infrastructure on Lightning: the job that runs a composed config, the callbacks and
loggers the configs name, the optimizer, and multi-process layout. Tasks and configs use it; it
knows no task."""
