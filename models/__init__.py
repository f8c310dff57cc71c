"""The model zoo: predictors of expert-load proportions. See :mod:`models.base` for the interface."""

from .base import History, ParamError, Predictor
from .registry import available, predictor_class

__all__ = ["Predictor", "History", "ParamError", "predictor_class", "available"]
