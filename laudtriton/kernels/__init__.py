"""Triton kernel families (DESIGN.md section 4).

Import a family module directly; this package imports without Triton.
"""
