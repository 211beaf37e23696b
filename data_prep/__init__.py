"""Per-corpus preparation: each module turns a corpus tree into a manifest.

    python -m data_prep.folder   --root DIR --out manifests/NAME   any folder of audio
    python -m data_prep.iemocap  --root IEMOCAP_full_release --out manifests/iemocap
    python -m data_prep.crema_d  --root CREMA-D --out manifests/crema_d
    python -m data_prep.ravdess  --root RAVDESS --out manifests/ravdess
    python -m data_prep.table    --table labels.csv --root DIR --out manifests/NAME

See docs/data.md for sources, licences and expected counts.
"""
