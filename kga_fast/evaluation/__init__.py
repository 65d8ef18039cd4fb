"""Evaluation, apart from the methods it judges: what a model predicts and the paper's metrics
(evaluate.py), the membership-inference audit (audit.py), the retrain pool every result is judged
against (pool.py), the challenge's forgetting quality (forgetting.py), and the reports built from
results.json (report.py: report.md and report.png; methods_report.py: its tables of methods).

Nothing here imports kga_fast.methods: a method may call `predict`, never the other way round.
"""
