"""Data phase: the raw release in, the processed images and the patient-wise split out (no torch)."""
