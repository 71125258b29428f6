"""L3 of graphopt: opt-in lossy steps (int8, the accuracy budget) and their calibration.

api.py        int8_static, int8_dynamic, with_budget, agreement, LossyReport
calibrate.py  calibration data: checked feeds, streaming range statistics
budget.py     the accuracy-budget search over candidates"""
from graphopt.lossy.api import LossyReport, agreement, int8_dynamic, int8_static, with_budget

__all__ = ["LossyReport", "agreement", "int8_dynamic", "int8_static", "with_budget"]
