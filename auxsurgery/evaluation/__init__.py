"""Evaluation: which attacks run (:mod:`.plans`, the suite registry), running them (:mod:`.runner`),
what they measured (:mod:`.results`), judging per sample and the worst case (:mod:`.judging`),
sanity checks (:mod:`.sanity`), the per-head study and the report (:mod:`.report`).

::

    from auxsurgery.evaluation import run_suite, write_report
    result = run_suite(aux_model, (x, y), suite="static,adaptive,strong", dataset="cifar10")
    print(result.worst_case().outcome.accuracy("vote"), [w.message for w in result.warnings])
    write_report(result, "report/")  # results.json, report.md, PNG plots
"""
from .heads_study import HeadsStudy
from .inputs import check_compatible, collect, load_eval_data
from .judging import Outcome, WorstCase, evaluate, worst_case
from .plans import AttackPlan, Cascade, SuiteContext, get_suite, list_suites, parse_suites, plan, register_suite
from .presets import PRESETS, Budget, Preset, get_preset
from .report import SCHEMA, markdown_report, print_table, results_document, validate_results, write_report
from .results import AttackRow, SuiteResult
from .runner import run_suite
from .sanity import Finding, sanity_checks

__all__ = [
    "AttackPlan", "AttackRow", "Budget", "Cascade", "Finding", "HeadsStudy", "Outcome", "PRESETS", "Preset",
    "SCHEMA", "SuiteContext", "SuiteResult", "WorstCase", "check_compatible", "collect", "evaluate", "get_preset",
    "get_suite", "list_suites", "load_eval_data", "markdown_report", "parse_suites", "plan", "print_table",
    "register_suite", "results_document", "run_suite", "sanity_checks", "validate_results", "worst_case",
    "write_report",
]
