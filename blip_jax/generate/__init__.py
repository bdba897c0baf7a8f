"""Captioning and decoding: cached decoder, greedy / beam search / nucleus sampling."""
