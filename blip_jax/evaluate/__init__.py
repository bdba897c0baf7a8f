"""Evaluators: retrieval (cosine + ITM re-rank, TR/IR@K)."""
