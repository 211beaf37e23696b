"""Corpus preparation: each module turns a corpus on disk into manifests (`python -m data_prep.NAME`)."""
