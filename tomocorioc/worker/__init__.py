"""What runs in worker processes: the phase runner, the pipeline, the reconstruction backends, the AI
scorer, the classical COR metrics, TomoLog and the summary image.  The IOC process imports only the
entry points :mod:`.process` and :mod:`.dask_plugin` (which load the rest by name)."""
