"""Library adapters: any sktime forecaster or darts model as a predictor, named on the command line.

``--model sktime:ThetaForecaster``, ``--model darts:NBEATSModel --param n_epochs=3``: the
registry (:data:`models.registry.ADAPTERS`) calls :func:`models.adapters.sktime.adapter_class`
or :func:`models.adapters.darts.adapter_class` with the name, which returns a
:class:`~models.base.Predictor` subclass whose parameters are the adapter's (``window``,
``min_records``, and ``max_samples_per_ts`` for global darts models) plus the library
constructor's. Shared behaviour (series layout, window, refit, clipping and renormalising):
:mod:`models.adapters.common`. The libraries are imported only when an adapter is asked for.
"""
