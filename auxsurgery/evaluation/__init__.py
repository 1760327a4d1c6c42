"""Evaluation: attack suites, per-sample worst case, sanity checks, the per-head study and reports.

::

    from auxsurgery.evaluation import run_suite, write_report
    result = run_suite(aux_model, (x, y), suite="static,adaptive,strong", dataset="cifar10")
    print(result.worst_case().outcome.accuracy("vote"), [w.message for w in result.warnings])
    write_report(result, "report/")  # results.json, report.md, PNG plots
"""
from .heads_study import HeadsStudy
from .presets import PRESETS, Budget, Preset, get_preset
from .report import SCHEMA, markdown_report, print_table, results_document, validate_results, write_report
from .sanity import Finding, sanity_checks
from .suites import SUITES, AttackPlan, AttackRow, Cascade, SuiteResult, collect, parse_suites, plan, run_suite
from .worst_case import Outcome, WorstCase, evaluate, worst_case

__all__ = [
    "AttackPlan", "AttackRow", "Budget", "Cascade", "Finding", "HeadsStudy", "Outcome", "PRESETS", "Preset",
    "SCHEMA", "SUITES", "SuiteResult", "WorstCase", "collect", "evaluate", "get_preset", "markdown_report",
    "parse_suites", "plan", "print_table", "results_document", "run_suite", "sanity_checks", "validate_results",
    "worst_case", "write_report",
]
