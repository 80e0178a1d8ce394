"""Vendor-side release builds at fleet scale: build matrices, tasks, Dask execution.

:mod:`~bsipatch.vendor.matrix` reads and validates a build matrix (one release, many
device variants, the images of each component), :mod:`~bsipatch.vendor.tasks` is the
work of one task (diff, seals, digest; runs on a Dask worker or in process),
:mod:`~bsipatch.vendor.execute` runs the tasks (in process, on a ``LocalCluster`` or
on an existing scheduler) and :mod:`~bsipatch.vendor.build` plans a build, stages
the patches in the repository and publishes them through :mod:`bsipatch.trust.publish`.

Devices never import this package. Dask and fsspec come with the ``vendor`` extra
(``pip install 'bsipatch[vendor]'``) and are imported only when a build needs them.
"""
