"""Evaluation: retrieval metrics, embedding galleries with a trained model, text/image queries."""
