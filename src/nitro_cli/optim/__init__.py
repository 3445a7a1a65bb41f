"""IntegerSGD, lr_inv schedules and early stopping."""

from .schedules import ConstantSchedule, EarlyStopping, PlateauSchedule
from .sgd import IntegerSGD

__all__ = ["ConstantSchedule", "EarlyStopping", "IntegerSGD", "PlateauSchedule"]
