"""`emotion-ssl demo` and the built-in corpus it runs on.

    from emotion_ssl.demo import DemoSettings, run_demo
    run_demo("demo_out", settings=DemoSettings.quick())

run.py: the demo's stages (data, pretraining, export, probe, extraction, report);
corpus.py: the project's speech generator (speaker-split emotional speech, a flat test corpus).
"""

from emotion_ssl.demo.corpus import (
    EMOTIONS,
    CorpusSpec,
    render_utterance,
    synthesize_utterance,
    write_emotion_corpus,
    write_synthetic_corpus,
)
from emotion_ssl.demo.run import (
    FULL,
    NO_CATEGORY,
    RECIPE,
    DemoData,
    DemoSettings,
    _precision,
    combined_loss_plot,
    held_out,
    monitor_plot,
    pretrain_run,
    probe,
    ravdess_data,
    run_demo,
    synthetic_data,
)

__all__ = [
    "EMOTIONS",
    "FULL",
    "NO_CATEGORY",
    "RECIPE",
    "CorpusSpec",
    "DemoData",
    "DemoSettings",
    "_precision",
    "combined_loss_plot",
    "held_out",
    "monitor_plot",
    "pretrain_run",
    "probe",
    "ravdess_data",
    "render_utterance",
    "run_demo",
    "synthesize_utterance",
    "synthetic_data",
    "write_emotion_corpus",
    "write_synthetic_corpus",
]
