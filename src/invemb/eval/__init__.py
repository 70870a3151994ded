"""invemb.eval: one evaluation suite for every encoder (anything implementing ``Encoder``).

Each evaluator is a class with ``__call__(encoder) -> dict[str, float]`` and a
``primary_metric``; :func:`invemb.eval.suite.run_suite` runs a named suite over several encoders
and :mod:`invemb.eval.report` writes the side-by-side table and plots.
"""
from invemb.eval.base import NotRun, encode_checked
from invemb.eval.order import OrderEvaluator, OrderProbe, make_order_probes
from invemb.eval.relations import RelationEvaluator

__all__ = ["NotRun", "encode_checked", "OrderEvaluator", "OrderProbe", "make_order_probes", "RelationEvaluator"]
