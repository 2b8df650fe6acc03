"""Inference: a checkpoint becomes a model; predict, ensembles across runs, export, pseudo-labels."""
