"""Utilities with no knowledge of models: validation, errors, files, integrity, timing, statistics, tables, CUDA graphs.
"""
