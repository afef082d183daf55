"""Container executors: one module per backend, all behind the ContainerExecutor protocol."""
