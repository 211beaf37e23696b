"""Export and import of encoders (fairseq checkpoint key mapping for now)."""
