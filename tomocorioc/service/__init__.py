"""The IOC-process side: the service (queue, durable state, settings), the local and Dask dispatchers,
and the automatic trigger.  Never imports torch; the work runs in :mod:`tomocorioc.worker` processes."""
