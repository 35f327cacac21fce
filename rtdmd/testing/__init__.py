"""Tiny instances of the real architectures, shared by the tests and the tools.

Each builder makes random-weight (or offline-tokenizer) components of the real diffusers /
transformers classes at toy size and saves them in the layout of the real release, so they load
through the same code as real weights.
"""
