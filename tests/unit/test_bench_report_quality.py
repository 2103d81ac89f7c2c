"""bench/report.py renders bench/quality.py's and parley eval's results for the README."""

from __future__ import annotations

from bench import report

META = {
    "commit": "0123456789abcdef",
    "date": "2026-12-02T00:00:00+00:00",
    "machine": {"cpu": "cpu", "cores": 2, "torch": "2", "gpu": None},
}


def test_quality_renders_every_mode_and_each_sample_as_one_row() -> None:
    figures = {
        "judge_preference": 0.5,
        "judge_relative_score": 0.25,
        "word_validity": 0.9,
        "reply_chars": 40.0,
        "remembered_share": 1.0,
    }
    result = {
        "meta": META,
        "contexts": 3,
        "split": "test",
        "settings": {"judge": "a judge"},
        "human": {"judge_score": 0.3},
        "random": {"judge_score": 0.1},
        "modes": {"generate": figures, "retrieve_pmi": figures},
        "default_mode": "retrieve_pmi",
        "samples": [{"prompt": "hi?", "generate": "a | b\nsecond line", "retrieve_pmi": ""}],
    }
    block = report.render({"quality-cpu": result})
    assert "| `retrieve`, PMI (default) | 50.0% | 0.25 | 90.0% | 40 | 100% |" in block
    assert "| hi? | a \\| b / second line | (empty) |" in block  # one line per sample


def test_eval_renders_the_relevance_figures() -> None:
    result = {
        "meta": META,
        "checkpoint": "engine/starter",
        "contexts": 200,
        "test_bpc": 1.5,
        "r_at_1": 0.2,
        "r_at_1_pmi": 0.4,
        "r_at_1_tfidf": 0.45,
        "word_validity": 0.97,
        "reply_chars": 60.0,
        "distinct_2": 0.8,
    }
    block = report.render({"eval-starter": result})
    assert "R@1 of 10 0.200 by likelihood, 0.400 by PMI" in block
    assert "TF-IDF ranker's 0.450" in block
